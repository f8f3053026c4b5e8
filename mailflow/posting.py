"""A parsed reply becomes timeline entries and state changes, all in one transaction.

Who may do what: anyone who may post (people and lists in contacts.yaml, the incident's
participants) adds text; only the incident's lead, communicator and scribe and the people
of contacts.yaml (unless `commands: false`) change it, and only when the envelope sender
is the From address. Everyone else's command-looking lines are posted as text.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from . import commands as cmd
from . import incidents as inc
from . import statuspage
from .errors import MailflowError
from .models import Due, Entry, Incident, InMessage, OutMessage, Recipient
from .receipts import Receipt, auto_reply, queue_receipt
from .render import bare_address
from .replies import Reply

if TYPE_CHECKING:
    from .app import Mailflow

# Strangers' and auto-replies' mail is kept only this far: it is evidence, not content.
MAX_STORED_BYTES = 64 * 1024
# The lead hears about refused strangers at most this often per incident, in one digest.
STRANGER_DIGEST_EVERY = timedelta(hours=1)
# The same sender and body to the base address within this long declare once.
DECLARATION_DEDUP = timedelta(hours=1)


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


def may_command(app: Mailflow, incident: Incident, sender: str) -> bool:
    """The incident's roles and the people of contacts.yaml (not lists) change an incident."""
    if not sender:
        return False
    if sender in {incident.lead, incident.communicator, incident.scribe}:
        return True
    person = app.contacts.person(sender)
    return person is not None and person.commands


def why_no_authority(app: Mailflow, incident: Incident, reply: Reply, mail_from: str) -> str:
    """"" when the reply's commands may apply, else the reason, in words for the sender."""
    if not may_command(app, incident, reply.sender):
        person = app.contacts.person(reply.sender)
        if person is not None:
            return ("you may add text but not change the incident: your entry in "
                    "contacts.yaml says `commands: false`")
        return ("you may add text but not change the incident: only its lead, communicator "
                "and scribe and the people listed in contacts.yaml can")
    if bare_address(mail_from) != reply.sender:
        # A forged From alone must not change an incident. Authenticate senders at the MTA.
        return ("you may add text but not change the incident: the envelope sender (MAIL "
                f"FROM) {bare_address(mail_from) or mail_from or '<>'} is not the From address "
                f"{reply.sender}")
    return ""


def _capped(raw: bytes) -> bytes:
    return raw if len(raw) <= MAX_STORED_BYTES else raw[:MAX_STORED_BYTES]


def accept_reply(app: Mailflow, incident: Incident, reply: Reply, raw: bytes, mail_from: str,
                 now: datetime) -> Outcome:
    """Apply one reply to one incident and commit; the caller answers SMTP with `code`."""
    if incident.status == "draft":  # from an alert: `declare` or `dismiss` (alerts.py)
        from . import alerts
        return alerts.accept_reply(app, incident, reply, raw, mail_from, now)
    with inc.locked(app, incident):
        outcome = _apply(app, incident, reply, mail_from, now)
        if outcome.code < 400:
            small = outcome.outcome in ("auto-reply", "bounce")
            InMessage.create(incident=incident, received_at=now, mail_from=mail_from,
                             sender=reply.sender, message_id=reply.message_id,
                             content=_capped(raw) if small else raw, outcome=outcome.outcome)
    return outcome


def _apply(app: Mailflow, incident: Incident, reply: Reply, mail_from: str,
           now: datetime) -> Outcome:
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
        note_stranger(app, incident, author, now)
        return Outcome(550, f"5.7.1 {author or 'this sender'} may not post to {incident.ref}",
                       "refused")
    receipt = Receipt()
    outcome = _post(app, incident, reply, mail_from, now, receipt)
    always = app.config.inbound.receipts == "always"
    if receipt.needed or always:
        queue_receipt(app, incident, reply, receipt, now)
    return outcome


def _post(app: Mailflow, incident: Incident, reply: Reply, mail_from: str, now: datetime,
          receipt: Receipt) -> Outcome:
    """What an allowed sender's reply does; `receipt` collects what to tell them."""
    author = reply.sender
    why_not = why_no_authority(app, incident, reply, mail_from)
    command_lines = bool(reply.commands or reply.refused or reply.lookalikes)
    if why_not:
        # Text only: what they wrote is posted whole, command-looking lines included.
        text = reply.own_text.strip()
        note = ""
        if command_lines:
            lines = cmd.parse(text).lines
            receipt.authority = why_not
            receipt.as_text = list(lines)
            note = (f"(Posted as text, changed nothing: {'; '.join(lines)})" if lines else "")
        if not incident.is_open:
            return _after_end(app, incident, author, text, now, receipt)
        if not text:
            return _empty(incident, author, now)
        inc.apply_update(app, incident, now, author, text=text, note=note)
        receipt.posted = True
        return Outcome(250, f"2.0.0 posted to {incident.ref} as text", "posted")
    if reply.lookalikes:
        # A misspelt command is not posted to everyone: the sender corrects and resends.
        receipt.held = [(la.line, la.suggestion) for la in reply.lookalikes]
        inc.log(incident, now, "held", "reply held (look-alike command: "
                + "; ".join(la.line for la in reply.lookalikes) + ")", author=author,
                data={"lines": [la.line for la in reply.lookalikes]})
        return Outcome(250, "2.0.0 held: a line looks like a command but is none; the sender "
                            "is told", "held")
    receipt.refused += [(r.line, r.reason) for r in reply.refused]
    published = _publish(app, incident, reply, now, receipt)
    names = [c.name for c in reply.commands if c.name != "publish"]
    if not incident.is_open:
        if "reopen" not in names:
            others = [c for c in reply.commands if c.name != "publish"]
            receipt.refused += [(_label(c), f"{incident.ref} is {incident.status}: reply "
                                 "`reopen` first") for c in others]
            if published and not reply.text:
                return Outcome(250, f"2.0.0 {incident.ref} published", "command")
            return _after_end(app, incident, author, reply.text, now, receipt)
        inc.reopen(app, incident, now, author, notify=False)
        receipt.applied.append("reopen")
    elif "reopen" in names:
        receipt.refused.append(("reopen", f"{incident.ref} is open"))
    tz = _timezone(app, author)
    fields: dict[str, str | None] = {}
    impacted: list[str] = []
    next_update = None
    for c in reply.commands:
        if c.name in ("severity", "impact", "eta"):
            fields[c.name] = c.value
        elif c.name in inc.ROLES:
            fields[c.name] = author if c.value == "me" else c.value
        elif c.name == "impacted":
            impacted.append(c.value.lstrip("+"))
        elif c.name == "next update":
            next_update = c.value
    resolved = "resolved" in names
    text = "" if resolved else reply.text
    action = inc.apply_update(app, incident, now, author, text=text, fields=fields,
                              impacted=impacted, next_update=next_update, tz=tz, strict=False)
    receipt.applied += action.applied
    asked_at = None
    if next_update and not any(w.startswith("next update") for w, _ in action.refused):
        asked_at = incident.next_comm_at
        receipt.applied.append(f"next update: {inc.when_text(asked_at, tz)}")
    receipt.refused += action.refused
    receipt.posted = bool(text)
    if resolved:
        try:
            inc.resolve(app, incident, now, reply.text or "Resolved (no steps given).", author)
        except MailflowError as exc:
            receipt.refused.append(("resolved", str(exc)))
        else:
            receipt.applied.append("resolved: the solved email goes to everyone")
            return Outcome(250, f"2.0.0 {incident.ref} resolved", "resolved")
    reopened = "reopen" in receipt.applied
    send_now = "send now" in names or reopened
    if "send now" in names and not reopened:
        last = _last_send_now(incident)
        every = app.config.inbound.send_now_every
        if last is not None and now - last < every:
            receipt.refused.append((
                "send now", f"an update was sent on request at {last:%H:%M} UTC; `send now` is "
                f"honoured once every {inc.threshold_label(every)} per incident, so this one "
                "goes out with the next communication"))
            send_now = False
    if send_now:
        inc.send_update(app, incident, now)
        if asked_at is not None:  # the time the sender gave wins over the cadence
            inc.schedule_mark(app, incident, asked_at, now)
        inc.log(incident, now, "send-now", "update sent on request", author=author)
        receipt.sent = True
        if not reopened:
            receipt.applied.append("send now: the update went out")
    if not text and not action.entry and not reply.commands and not reply.refused:
        return _empty(incident, author, now)
    return Outcome(250, f"2.0.0 posted to {incident.ref}", "posted" if text else "command",
                   send_now=send_now)


def _publish(app: Mailflow, incident: Incident, reply: Reply, now: datetime,
             receipt: Receipt) -> bool:
    """`publish` / `publish: other words`: the pending status update goes out (even after
    the end: the solved communication is published once the incident is resolved)."""
    asked = [c for c in reply.commands if c.name == "publish"]
    if not asked:
        return False
    try:
        update = statuspage.publish(app, incident, now, reply.sender, asked[-1].value)
    except MailflowError as exc:
        receipt.refused.append((_label(asked[-1]), str(exc)))
        return False
    receipt.applied.append(f"publish: the status page now says {update.public_text!r}")
    return True


def _label(c: cmd.Command) -> str:
    return f"{c.name}: {c.value}" if c.value else c.name


def _empty(incident: Incident, author: str, now: datetime) -> Outcome:
    inc.log(incident, now, "empty", f"empty reply from {author} (only quoted text?)",
            author="mailflow")
    return Outcome(250, "2.0.0 nothing to post (empty reply)", "empty")


def _timezone(app: Mailflow, address: str) -> str | None:
    person = app.contacts.person(address)
    return person.timezone if person else None


def _last_send_now(incident: Incident) -> datetime | None:
    last = (Entry.select(Entry.at).where((Entry.incident == incident) & (Entry.kind == "send-now"))
            .order_by(Entry.at.desc()).first())
    return last.at if last else None


# --- after the end ------------------------------------------------------------------------

def _after_end(app: Mailflow, incident: Incident, author: str, text: str, now: datetime,
               receipt: Receipt) -> Outcome:
    """A reply to a resolved incident is kept and put in front of the lead and communicator
    at once, with how to reopen: "seeing 502s again!" must not wait in a closed file."""
    if not text:
        return _empty(incident, author, now)
    inc.log(incident, now, "note", text, author=author)
    to = inc.lead_recipients(app, incident, now)
    if to:
        inc.communicate(app, incident, "notice", now, to=to, marks_sent=False,
                        title=f"{author} replied to {incident.ref}, which is {incident.status}",
                        paragraphs=[
                            f"{author} wrote after {incident.ref} was resolved:",
                            text,
                            "If the problem is back, reopen the incident: reply `reopen` to "
                            "this email (with any update below it), or run `mailflow reopen "
                            f"{incident.ref}`. Reopening tells everyone and restarts the "
                            "communication cadence.",
                        ])
    receipt.notes.append(f"{incident.ref} is {incident.status}: your reply was kept and sent to "
                         "the incident's lead and communicator, who can reopen it.")
    return Outcome(250, f"2.0.0 {incident.ref} is {incident.status}; the lead is told", "note")


# --- strangers ----------------------------------------------------------------------------

def note_stranger(app: Mailflow, incident: Incident, sender: str, now: datetime) -> None:
    """Record the refusal; the lead gets at most one digest of strangers per hour."""
    inc.log(incident, now, "refused", f"reply from {sender or 'an empty sender'} refused: "
            "not in contacts.yaml nor a participant", author=sender)
    if not incident.lead:
        return
    last = _last_digest(incident)
    if last is None or now - last.at >= STRANGER_DIGEST_EVERY:
        send_stranger_digest(app, incident, now)
    else:
        inc.plan(incident, DIGEST_KIND, last.at.isoformat(), last.at + STRANGER_DIGEST_EVERY)


DIGEST_KIND = "strangers"


def _last_digest(incident: Incident) -> Entry | None:
    return (Entry.select(Entry.id, Entry.at)
            .where((Entry.incident == incident) & (Entry.kind == "strangers-told"))
            .order_by(Entry.id.desc()).first())


def send_stranger_digest(app: Mailflow, incident: Incident, now: datetime) -> bool:
    """One notice to the lead naming every stranger refused since the last one."""
    last = _last_digest(incident)
    q = Entry.select(Entry.author).where((Entry.incident == incident) & (Entry.kind == "refused"))
    if last is not None:
        q = q.where(Entry.id > last.id)
    strangers = list(dict.fromkeys(e.author for e in q.order_by(Entry.at, Entry.id) if e.author))
    if not strangers or not incident.lead:
        return False
    lead = inc.add_recipient(app, incident, incident.lead, "as the incident lead", now)
    shown = strangers[:50]
    more = f" and {len(strangers) - 50} more" if len(strangers) > 50 else ""
    # Addresses are quoted for the shell: a stranger may be named x`id`@evil.example.
    command = " ".join(["mailflow", "add-recipient", incident.ref, *map(shlex.quote, shown)])
    inc.communicate(app, incident, "notice", now, to=[lead], marks_sent=False,
                    title=f"Replies to {incident.ref} from {len(strangers)} unknown "
                          f"sender{'s' if len(strangers) != 1 else ''} were refused",
                    paragraphs=[
                        f"Not in contacts.yaml nor participants of {incident.ref}, so their "
                        f"replies were not posted: {', '.join(shown)}{more}.",
                        "If they should be able to post, add them (check each address first): "
                        f"`{command}`, or `mailflow contacts add`. You hear about further "
                        "refusals at most once an hour.",
                    ])
    inc.log(incident, now, "strangers-told",
            f"told {incident.lead} about {len(strangers)} refused sender(s)", author="mailflow",
            data={"strangers": strangers[:200]})
    return True


def _digest_due(app: Mailflow, incident: Incident, due: Due, now: datetime) -> bool:
    return send_stranger_digest(app, incident, now)


DUE_HANDLERS = {DIGEST_KIND: _digest_due}


# --- declare by email ---------------------------------------------------------------------

_SUBJECT_PREFIX = re.compile(r"^\s*((re|fwd?|aw|tr|wg)\s*:\s*)+", re.I)


def parse_declaration(reply: Reply) -> tuple[dict[str, str], str]:
    """`service:`/`severity:`/`impact:`… lines at the top, the summary below (or the subject)."""
    fields, summary, _ = _declaration(reply)
    return fields, summary


def _declaration(reply: Reply) -> tuple[dict[str, str], str, list[str]]:
    """(fields, summary, problems): the same parser as reply commands, declaration fields."""
    parsed = cmd.parse(reply.own_text or reply.text, cmd.DECLARATION_FIELDS)
    fields: dict[str, str] = {}
    for c in parsed.commands:
        key = c.name.replace(" ", "_")
        if key == "impacted":
            fields[key] = " ".join(filter(None, (fields.get(key, ""), c.value.lstrip("+"))))
        else:
            fields[key] = c.value
    problems = [f"`{r.line}`: {r.reason}" for r in parsed.refused]
    problems += [f"`{la.line}`: did you mean `{la.suggestion}:`?" for la in parsed.lookalikes]
    summary = parsed.text.strip() or _SUBJECT_PREFIX.sub("", reply.subject).strip()
    return fields, summary, problems


def _digest(sender: str, reply: Reply) -> str:
    """What makes two declarations the same: the sender and what they wrote."""
    body = " ".join((reply.own_text or reply.text).split()) or \
        " ".join(_SUBJECT_PREFIX.sub("", reply.subject).split())
    return hashlib.sha256(f"{sender}\n{body}".encode("utf-8", "surrogatepass")).hexdigest()


def _declared_before(reply: Reply, sender: str, digest: str, now: datetime) -> Incident | None:
    """The incident this very declaration already opened (same Message-ID, or same sender
    and body within an hour): an MTA retry or a resend never declares twice."""
    q = InMessage.select().where(InMessage.outcome.in_(("declared", "duplicate"))
                                 & InMessage.incident.is_null(False))
    if reply.message_id:
        found = q.where(InMessage.message_id == reply.message_id).first()
        if found is not None:
            return found.incident
    found = q.where((InMessage.outcome == "declared") & (InMessage.digest == digest)
                    & (InMessage.sender == sender)
                    & (InMessage.received_at >= now - DECLARATION_DEDUP)).first()
    return found.incident if found is not None else None


def accept_declaration(app: Mailflow, reply: Reply, raw: bytes, mail_from: str,
                       now: datetime) -> Outcome:
    """An email to the base address from a known contact declares an incident."""
    if reply.is_bounce or reply.is_auto_reply:
        return Outcome(250, "2.0.0 auto-reply ignored", "auto-reply")
    from . import subscribers  # anyone may (un)subscribe, by a line of its own
    if (subscription := subscribers.accept_base(app, reply, raw, mail_from, now)) is not None:
        return subscription
    sender = reply.sender
    if not sender or not app.contacts.knows(sender):
        return Outcome(550, f"5.7.1 {sender or 'this sender'} may not declare incidents: "
                            "not in contacts.yaml", "refused")
    # Declaring alerts many people: the envelope sender must be the From address too (a
    # forged From alone does not declare). Authenticate senders at your MTA (DMARC).
    if bare_address(mail_from) != sender:
        return Outcome(550, "5.7.1 to declare, the envelope sender must be the From address",
                       "refused")
    digest = _digest(sender, reply)
    earlier = _declared_before(reply, sender, digest, now)
    if earlier is not None:
        # Kept (small) with its Message-ID: a retry of this very message is known for good.
        InMessage.create(incident=earlier, received_at=now, mail_from=mail_from, sender=sender,
                         message_id=reply.message_id, content=_capped(raw),
                         outcome="duplicate", digest=digest)
        return Outcome(250, f"2.0.0 already declared as {earlier.ref}", "duplicate")
    fields, summary, problems = _declaration(reply)
    missing = [k for k in ("service", "severity", "impact") if not fields.get(k)]
    problem = ""
    if problems:
        problem = "; ".join(problems)
    elif missing:
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
                    lead=(sender if fields.get("lead") == "me" else fields.get("lead"))
                    or sender, author=sender)
                InMessage.create(incident=incident, received_at=now, mail_from=mail_from,
                                 sender=sender, message_id=reply.message_id, content=raw,
                                 outcome="declared", digest=digest)
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
    services = ", ".join(sorted(app.contacts.services)) or "(none in contacts.yaml)"
    msg, message_id = auto_reply(
        app, reply, f"Re: {reply.subject}" if reply.subject else "Incident not declared", now)
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
