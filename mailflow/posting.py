"""A parsed reply becomes timeline entries and state changes, all in one transaction."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid
from typing import TYPE_CHECKING

from . import incidents as inc
from .errors import MailflowError
from .models import Entry, Incident, InMessage, OutMessage, Recipient
from .render import bare_address, one_line
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
    if incident.status == "draft":  # from an alert: `declare` or `dismiss` (alerts.py)
        from . import alerts
        return alerts.accept_reply(app, incident, reply, raw, mail_from, now)
    with inc.locked(app, incident):
        outcome = _apply(app, incident, reply, now)
        if outcome.code < 400:
            InMessage.create(incident=incident, received_at=now, mail_from=mail_from,
                             sender=reply.sender, message_id=reply.message_id, content=raw,
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


# --- declare by email ---------------------------------------------------------------------

_FIELD = re.compile(r"^\s*(service|severity|impact|impacted|eta|started|next[ _-]?steps|lead)"
                    r"\s*:\s*(.*?)\s*$", re.I)
_SUBJECT_PREFIX = re.compile(r"^\s*((re|fwd?|aw|tr|wg)\s*:\s*)+", re.I)


def parse_declaration(reply: Reply) -> tuple[dict[str, str], str]:
    """`service:`/`severity:`/`impact:`… lines at the top, the summary below (or the subject)."""
    fields = {c.name: c.value for c in reply.commands if c.name in ("severity", "impact", "eta")}
    lines = reply.text.split("\n")
    i = 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        m = _FIELD.match(lines[i])
        if not m:
            break
        fields[m.group(1).lower().replace(" ", "_").replace("-", "_")
               .replace("nextsteps", "next_steps")] = m.group(2)
        i += 1
    summary = "\n".join(lines[i:]).strip() or _SUBJECT_PREFIX.sub("", reply.subject).strip()
    return fields, summary


def accept_declaration(app: Mailflow, reply: Reply, raw: bytes, mail_from: str,
                       now: datetime) -> Outcome:
    """An email to the base address from a known contact declares an incident."""
    if reply.is_bounce or reply.is_auto_reply:
        return Outcome(250, "2.0.0 auto-reply ignored", "auto-reply")
    sender = reply.sender
    if not sender or not app.contacts.knows(sender):
        return Outcome(550, f"5.7.1 {sender or 'this sender'} may not declare incidents: "
                            "not in contacts.yaml", "refused")
    # Declaring alerts many people: the envelope sender must be the From address too (a
    # forged From alone does not declare). Authenticate senders at your MTA (DMARC).
    if bare_address(mail_from) != sender:
        return Outcome(550, "5.7.1 to declare, the envelope sender must be the From address",
                       "refused")
    fields, summary = parse_declaration(reply)
    missing = [k for k in ("service", "severity", "impact") if not fields.get(k)]
    problem = ""
    if missing:
        problem = f"missing {', '.join(f'`{k}:`' for k in missing)} line(s) at the top"
    elif not summary:
        problem = "no summary: write one line below the fields saying what is broken"
    incident = None
    if not problem:
        try:
            with app.db.atomic():
                incident = inc.declare(
                    app, now, service=fields["service"], severity=fields["severity"],
                    impact=fields["impact"], summary=summary.split("\n")[0][:300],
                    impacted=fields.get("impacted", "").replace(",", " ").split(),
                    eta=fields.get("eta", ""), started=fields.get("started", ""),
                    next_steps=fields.get("next_steps", ""),
                    lead=fields.get("lead") or sender, author=sender)
                InMessage.create(incident=incident, received_at=now, mail_from=mail_from,
                                 sender=sender, message_id=reply.message_id, content=raw,
                                 outcome="declared")
        except MailflowError as exc:
            problem = str(exc)
    if incident is not None:
        return Outcome(250, f"2.0.0 declared {incident.ref}", "declared")
    with app.db.atomic():
        _queue_refusal(app, reply, problem, now)
        InMessage.create(incident=None, received_at=now, mail_from=mail_from, sender=sender,
                         message_id=reply.message_id, content=raw, outcome="declaration refused")
    return Outcome(250, "2.0.0 declaration refused; the sender is told why", "declaration refused")


def _queue_refusal(app: Mailflow, reply: Reply, problem: str, now: datetime) -> None:
    """Tell the sender what is wrong with their declaration (RFC 3834 auto-replied)."""
    cfg = app.config
    services = ", ".join(sorted(app.contacts.services)) or "(none in contacts.yaml)"
    msg = EmailMessage(policy=SMTP)
    msg["From"] = cfg.sender
    msg["To"] = reply.sender
    msg["Subject"] = one_line(f"Re: {reply.subject}" if reply.subject else "Incident not declared")
    msg["Date"] = format_datetime(now)
    message_id = make_msgid(domain=cfg.reply_domain)
    msg["Message-ID"] = message_id
    if reply.message_id:
        msg["In-Reply-To"] = reply.message_id
        msg["References"] = reply.message_id
    msg["Auto-Submitted"] = "auto-replied"  # RFC 3834: robots must not answer this
    msg.set_content(
        f"No incident was declared: {problem}.\n\n"
        "Write the fields one per line at the top of the email, then the summary:\n\n"
        "    service: learn\n    severity: P1\n    impact: outage\n\n"
        "    Learn platform returns 502 for every page\n\n"
        f"Services: {services}. Severities: P0, P1, P2, P3. Impact: outage or degraded.\n"
        "Optional: impacted:, eta:, started:, next steps:, lead:.\n")
    OutMessage.create(incident=None, kind="declaration-refused", recipient=reply.sender,
                      envelope_from="", message_id=message_id, content=msg.as_bytes(),
                      created_at=now, next_attempt_at=now)
