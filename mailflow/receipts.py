"""One short receipt to the sender of a reply: what was applied, what was not and why.

It is an automatic reply (RFC 3834 `Auto-Submitted: auto-replied`, null envelope sender)
in the sender's own thread, and it is never sent to an auto-reply, a bounce, an empty
sender or one of mailflow's own addresses: receipts cannot loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, formataddr, make_msgid
from typing import TYPE_CHECKING

from . import commands as cmd
from . import incidents as inc
from .addresses import normalise
from .composition import IncidentView
from .models import Incident
from .render import Personal, one_line
from .replies import Reply
from .tokens import reply_address, split_address

if TYPE_CHECKING:
    from .app import Mailflow


@dataclass
class Receipt:
    """What to tell the sender about their reply."""

    applied: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (line, why not)
    held: list[tuple[str, str]] = field(default_factory=list)  # (line, closest command)
    authority: str = ""  # why their commands were posted as text only
    as_text: list[str] = field(default_factory=list)  # those command-looking lines
    notes: list[str] = field(default_factory=list)
    posted: bool = False
    sent: bool = False  # `send now` sent the update (with the text) at once

    @property
    def needed(self) -> bool:
        """Commands, refusals or a hold: the sender must hear what became of them."""
        return bool(self.applied or self.refused or self.held or self.authority)


def _ours(app: Mailflow, address: str) -> bool:
    """mailflow's own From or reply addresses (any token): a receipt there would loop."""
    cfg = app.config
    local, _token, domain = split_address(address)
    if local == cfg.reply_local.lower() and domain == cfg.reply_domain.lower():
        return True
    return address == normalise(cfg.sender)


def auto_reply(app: Mailflow, reply: Reply, subject: str, now: datetime,
               to: str = "") -> tuple[EmailMessage, str]:
    """An RFC 3834 automatic answer to `reply`, in its thread: (message, its Message-ID)."""
    cfg = app.config
    msg = EmailMessage(policy=SMTP)
    msg["From"] = cfg.sender
    msg["To"] = to or reply.sender
    msg["Subject"] = one_line(subject)[:300]
    msg["Date"] = format_datetime(now)
    message_id = make_msgid(domain=cfg.reply_domain)
    msg["Message-ID"] = message_id
    if reply.message_id:
        msg["In-Reply-To"] = reply.message_id
        msg["References"] = reply.message_id
    msg["Auto-Submitted"] = "auto-replied"  # RFC 3834: robots must not answer this
    return msg, message_id


def suggestion(name: str) -> str:
    """How to write the command: `severity:`, or `resolved` for one without a value."""
    return name if name in cmd.BARE else f"{name}:"


def _preheader(receipt: Receipt) -> str:
    """The inbox preview line: what happened to the reply, in a few words."""
    if receipt.held:
        return "Held: a line looks like a command but is none; nothing was posted"
    parts = [f"Applied: {', '.join(receipt.applied)}"] if receipt.applied else []
    if receipt.refused:
        parts.append(f"refused: {len(receipt.refused)} line(s)")
    if receipt.authority:
        parts.append("your command lines were posted as text")
    return "; ".join(parts) or ("Your reply was posted" if receipt.posted else "Nothing changed")


def queue_receipt(app: Mailflow, incident: Incident, reply: Reply, receipt: Receipt,
                  now: datetime) -> str | None:
    """Queue the receipt; its Message-ID, or None when none may be sent."""
    sender = reply.sender
    if not sender or reply.is_auto_reply or reply.is_bounce or _ours(app, sender):
        return None
    cfg = app.config
    person = app.contacts.person(sender)
    tz = person.timezone if person else None
    recipient = Personal(email=sender, name=person.name if person else reply.sender_name,
                         reason=f"because you replied to {incident.ref}", timezone=tz)
    subject = reply.subject or incident.subject
    if not subject.lower().startswith("re:"):
        subject = f"Re: {subject}"
    address = reply_address(cfg.reply_local, cfg.reply_domain, incident.id, cfg.secret)
    ctx = {
        "kind": "receipt",
        "incident": IncidentView(incident),
        "subject": one_line(subject),
        "receipt": receipt,
        "held": [(line, suggestion(name)) for line, name in receipt.held],
        "next_comm": (inc.when_text(incident.next_comm_at, tz)
                      if incident.next_comm_at and incident.is_open else ""),
        "now": now,
        "reply_address": address,
        "preheader": _preheader(receipt),
    }
    text = app.renderer.text("receipt", ctx, recipient)
    html = app.renderer.preview("receipt", ctx, recipient)
    name = one_line(recipient.name)[:100]
    msg, message_id = auto_reply(app, reply, subject, now,
                                 formataddr((name, sender), charset="utf-8") if name else sender)
    msg["Reply-To"] = address
    msg["X-Auto-Response-Suppress"] = "All"
    msg["X-Mailflow-Incident"] = incident.ref
    msg["X-Mailflow-Kind"] = "receipt"
    msg.set_content(text, params={"format": "flowed"})  # the renderer wrapped it so
    msg.add_alternative(html, subtype="html")
    # Null envelope sender (RFC 3834): a receipt that cannot be delivered bounces nowhere.
    app.outbox.enqueue(incident.id, "receipt", "", [(sender, message_id, msg.as_bytes())], now)
    return message_id
