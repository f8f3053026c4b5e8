"""Turn a raw reply email into who sent it, what they wrote and which commands they gave.

Pure parsing: no I/O, no database. `parse_reply` never raises: a reply that cannot be
parsed degrades to less information (the daemon must still commit and acknowledge it;
an exception here would lose the mail).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import compat32

from .. import quotes as _quotes
from ..commands import Command, LookAlike, Refused, parse, parse_commands
from .bounces import _bounced_recipients, _classify
from .headers import _clean_text, _decode_header_words, _header, _message_id, _one_line, _parse_from
from .htmltext import html_to_text
from .limits import MAX_PARTS, MAX_RAW_BYTES, MAX_TEXT_CHARS
from .mime import _body_texts, _flat_body_texts, _parse_message

__all__ = [
    "MAX_PARTS",
    "Command",
    "Reply",
    "extract_text",
    "header_sender",
    "html_to_text",
    "parse_commands",
    "parse_reply",
]


@dataclass(frozen=True)
class Reply:
    """What a reply email says, ready to become a timeline entry (or to be ignored)."""

    sender: str
    sender_name: str
    subject: str
    message_id: str
    text: str
    commands: tuple[Command, ...]
    is_auto_reply: bool
    is_bounce: bool
    bounced_recipients: tuple[str, ...]
    reason: str
    own_text: str = ""  # what the sender wrote, command lines included
    refused: tuple[Refused, ...] = ()  # command lines whose value cannot be used
    lookalikes: tuple[LookAlike, ...] = ()  # lines that look like commands but are none



# --- quotes and signatures ---
# The rules live in mailflow.quotes (patterns as data in mailflow.reply_patterns); this
# module keeps the names other code imports.


def extract_text(body: str, sender_name: str = "") -> str:
    """What the sender wrote in a plain-text body: quoted history and signature removed."""
    return _quotes.extract_text(body, sender_name)


# --- commands ---
# The `key: value` lines at the top live in mailflow.commands (one parser for replies and
# declarations); parse_commands and Command are imported from here too.


# --- the whole reply ---


def _to_bytes(raw: object) -> bytes:
    if isinstance(raw, bytes):
        return raw
    if isinstance(raw, (bytearray, memoryview)):
        return bytes(raw)
    if isinstance(raw, str):
        return raw.encode("utf-8", "surrogateescape")
    return b""


def _parse_reply(raw: bytes, envelope_from: str | None) -> Reply:
    data = _to_bytes(raw)[:MAX_RAW_BYTES]
    msg, headers_only = _parse_message(data)
    if msg is None:
        body = _clean_text(data.decode("utf-8", errors="replace"))
    else:
        # Too nested for the email parser (a MIME bomb): walk the parts flat, never post
        # the MIME scaffolding (boundaries, part headers) as if the sender wrote it.
        plain, html_body = _flat_body_texts(msg) if headers_only else _body_texts(msg)
        body = plain if plain.strip() else html_to_text(html_body)
    sender_name, sender = _parse_from(_header(msg, "from"))
    subject = _one_line(_decode_header_words(_header(msg, "subject")))
    message_id = _message_id(_header(msg, "message-id"))
    is_auto, is_bounce, reason = _classify(msg, envelope_from, sender)
    reasons: list[str] = []
    bounced = _bounced_recipients(msg, reasons) if is_bounce else ()
    if reasons:  # what the reporting MTA said: recorded against the recipient, shown by `show`
        reason = " | ".join(dict.fromkeys(reasons))
    own_text = extract_text(body, sender_name)
    parsed = parse(own_text)
    return Reply(
        sender=sender,
        sender_name=sender_name,
        subject=subject,
        message_id=message_id,
        text=parsed.text,
        commands=parsed.commands,
        is_auto_reply=is_auto,
        is_bounce=is_bounce,
        bounced_recipients=bounced,
        reason=reason,
        own_text=own_text,
        refused=parsed.refused,
        lookalikes=parsed.lookalikes,
    )


# The email package's own rules (feedparser): how lines end, and what a header line is.
_LINE_END = re.compile(rb"\r\n|\r|\n")
_HEADER_LINE = re.compile(rb"(From |[\041-\071\073-\176]*:|[\t ])")


def _lines(data: bytes, stop: int) -> Iterator[bytes]:
    """The lines of `data[:stop]` without their ends, one at a time (nothing is copied or
    split past the line asked for: a reply's body stays as it is)."""
    start = 0
    for end in _LINE_END.finditer(data, 0, stop):
        yield data[start:end.start()]
        start = end.end()
    yield data[start:stop]


def _from_field(raw: bytes) -> bytes | None:
    """The first From field's lines of a plain header block (b"" if it has none), or None
    when the block has anything the email parser reads in a way of its own."""
    field: list[bytes] = []
    for i, line in enumerate(_lines(raw, MAX_RAW_BYTES)):
        if field and line[:1] not in (b" ", b"\t"):
            return b"\n".join(field)  # a blank line or the next field: From is complete
        if not line:
            return b""  # the end of the headers, and no From field
        if not _HEADER_LINE.match(line) or line.startswith(b"From ") \
                or (i == 0 and line[:1] in (b" ", b"\t")):
            return None  # a defect, or an mbox From_ line: the parser decides
        if field or line[:5].lower() == b"from:":
            field.append(line)
    return None  # no end of the headers within the limit


def header_sender(raw: bytes) -> str:
    """The From address of a raw message, as `parse_reply` reads it, from its headers alone."""
    try:
        raw = _to_bytes(raw)
        # Only the From field goes through the parser: parsing every header of a reply cost
        # a tenth of its accept under load. Anything unusual gets the whole block parsed.
        field = _from_field(raw)
        block = raw[:MAX_RAW_BYTES] if field is None else field + b"\n\n"
        msg = BytesParser(policy=compat32).parsebytes(block, headersonly=True)
        return _parse_from(_header(msg, "from"))[1]
    except Exception:  # as parse_reply: unreadable headers give no sender
        return ""


def parse_reply(raw: bytes, envelope_from: str | None = None) -> Reply:
    """Parse a raw reply email; never raises (unparseable parts degrade to empty values)."""
    try:
        return _parse_reply(raw, envelope_from)
    except Exception:  # last resort: keep the words, lose the structure
        try:
            text = extract_text(_to_bytes(raw)[:MAX_TEXT_CHARS].decode("utf-8", errors="replace"))
        except Exception:
            text = ""
        empty_envelope = envelope_from is not None and str(envelope_from).strip() in ("", "<>")
        return Reply(
            sender="",
            sender_name="",
            subject="",
            message_id="",
            text=text,
            commands=(),
            is_auto_reply=empty_envelope,
            is_bounce=False,
            bounced_recipients=(),
            reason="empty envelope sender (MAIL FROM:<>)" if empty_envelope else "",
            own_text=text,
        )
