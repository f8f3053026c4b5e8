"""A parsed reply becomes timeline entries and state changes, all in one transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from . import incidents as inc
from .errors import MailflowError
from .models import Entry, Incident, InMessage, Recipient
from .replies import Reply

if TYPE_CHECKING:
    from .app import Mailflow


@dataclass(frozen=True)
class Outcome:
    """What happened to a reply, and the SMTP answer that says so."""

    code: int
    message: str
    outcome: str
    send_now: bool = False


def may_post(app: Mailflow, incident: Incident, sender: str) -> bool:
    """People in contacts.yaml and the incident's participants may post."""
    if not sender:
        return False
    if app.contacts.knows(sender):
        return True
    if sender in {incident.lead, incident.communicator, incident.scribe, *incident.impacted}:
        return True
    return Recipient.select().where((Recipient.incident == incident)
                                    & (Recipient.email == sender)).exists()


def accept_reply(app: Mailflow, incident: Incident, reply: Reply, raw: bytes, mail_from: str,
                 now: datetime) -> Outcome:
    """Apply one reply to one incident and commit; the caller answers SMTP with `code`."""
    with app.db.atomic():
        outcome = _apply(app, incident, reply, now)
        if outcome.code < 400:
            InMessage.create(incident=incident, received_at=now, mail_from=mail_from,
                             sender=reply.sender, message_id=reply.message_id, raw=raw,
                             outcome=outcome.outcome)
    return outcome


def _apply(app: Mailflow, incident: Incident, reply: Reply, now: datetime) -> Outcome:
    if reply.is_bounce:
        for addr in reply.bounced_recipients:
            Recipient.update(status="bounced", last_error=reply.reason or "bounced").where(
                (Recipient.incident == incident) & (Recipient.email == addr)).execute()
        inc.log(incident, now, "bounce",
                f"bounce for {', '.join(reply.bounced_recipients) or 'an unknown recipient'}"
                f" ({reply.reason})", author="mailflow")
        return Outcome(250, "2.0.0 bounce recorded", "bounce")
    if reply.is_auto_reply:
        inc.log(incident, now, "auto-reply",
                f"auto-reply from {reply.sender or 'an empty sender'} ignored ({reply.reason})",
                author="mailflow")
        return Outcome(250, "2.0.0 auto-reply ignored", "auto-reply")
    if reply.message_id and InMessage.select().where(
            (InMessage.message_id == reply.message_id)
            & (InMessage.incident == incident)).exists():
        # A client or MTA that retries after a lost 250 must not post twice.
        return Outcome(250, "2.0.0 already posted", "duplicate")
    author = reply.sender
    if not may_post(app, incident, author):
        _tell_lead_once(app, incident, author, now)
        return Outcome(550, f"5.7.1 {author or 'this sender'} may not post to {incident.ref}",
                       "refused")
    if not incident.is_open:
        if reply.text:
            inc.log(incident, now, "note", reply.text, author=author)
        return Outcome(250, f"2.0.0 {incident.ref} is {incident.status}; kept as a note", "note")
    send_now = False
    resolved = False
    for command in reply.commands:
        name, value = command.name, command.value
        label = f"{name}: {value}" if value else name
        try:
            if name in ("severity", "impact", "eta"):
                inc.change(app, incident, now, author, **{name: value})
            elif name == "next update":
                inc.set_next_update(app, incident, value, now, author)
            elif name == "send now":
                send_now = True
            elif name == "resolved":
                resolved = True
            elif name in ("lead", "communicator", "scribe"):
                inc.assign(app, incident, now, author, **{name: author if value == "me" else value})
            elif name == "impacted":
                for addr in value.replace(",", " ").split():
                    inc.add_impacted(app, incident, addr.lstrip("+"), now, author)
            inc.log(incident, now, "command", label, author=author)
        except MailflowError as exc:
            # A command that cannot be applied is posted as text, never silently dropped.
            inc.log(incident, now, "update", f"{label} (not applied: {exc})", author=author,
                    shown=True)
    if resolved:
        inc.resolve(app, incident, now, reply.text or "Resolved (no steps given).", author)
        return Outcome(250, f"2.0.0 {incident.ref} resolved", "resolved")
    if reply.text:
        inc.post_update(app, incident, reply.text, author, now)
    elif not reply.commands:
        inc.log(incident, now, "empty", f"empty reply from {author} (only quoted text?)",
                author="mailflow")
        return Outcome(250, "2.0.0 nothing to post (empty reply)", "empty")
    if send_now:
        inc.send_update(app, incident, now)
    return Outcome(250, f"2.0.0 posted to {incident.ref}",
                   "posted" if reply.text else "command", send_now=send_now)


def _tell_lead_once(app: Mailflow, incident: Incident, sender: str, now: datetime) -> None:
    """Record the refusal; the lead hears about each stranger once per incident."""
    seen = Entry.select().where((Entry.incident == incident) & (Entry.kind == "refused")
                                & (Entry.author == sender)).exists()
    inc.log(incident, now, "refused", f"reply from {sender or 'an empty sender'} refused: "
            "not in contacts.yaml nor a participant", author=sender)
    if seen or not incident.lead:
        return
    lead = inc.add_recipient(app, incident, incident.lead, "as the incident lead", now)
    inc.communicate(app, incident, "notice", now, to=[lead], marks_sent=False,
                    title=f"A reply from {sender} to {incident.ref} was refused",
                    paragraphs=[
                        f"{sender} is neither in contacts.yaml nor a participant of "
                        f"{incident.ref}, so their reply was not posted.",
                        "If they should be able to post, add them: `mailflow add-recipient "
                        f"{incident.ref} {sender}` or `mailflow contacts add`.",
                    ])
