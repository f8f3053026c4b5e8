"""Turn a raw reply email into who sent it, what they wrote and which commands they gave.

Pure parsing: no I/O, no database. `parse_reply` never raises: a reply that cannot be
parsed degrades to less information (the daemon must still commit and acknowledge it;
an exception here would lose the mail).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import email.utils
import html
import io
import re
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from html.parser import HTMLParser
from itertools import islice

import mailparser

from . import quotes as _quotes
from .addresses import normalise
from .commands import Command, LookAlike, Refused, parse, parse_commands

__all__ = [
    "Command",
    "Reply",
    "extract_text",
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


# --- limits: every one keeps a hostile mail from costing more than a fraction of a second ---

MAX_RAW_BYTES = 25 * 1024 * 1024  # typical SMTP size limit; the tail of a bigger blob is ignored
MAX_MULTIPARTS = 200  # more multipart declarations than this: MIME bomb, parse headers only
MAX_PARTS = 1000  # parts visited when looking for the body
MAX_TEXT_CHARS = 100_000  # body text searched for quotes; an update is never this long
MAX_LIBRARY_HEADER_BYTES = 64 * 1024  # mail-parser decodes every header eagerly, in O(n^2)
MAX_HTML_CHARS = 2_000_000
_HEADER_CHARS = 2000

# --- text hygiene ---

# C0 controls except \t and \n, DEL, lone surrogates (they cannot be stored as UTF-8) and
# the byte-order mark some clients put in front of the text.
_TEXT_JUNK = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ud800-\udfff\ufeff]")
# In single-line values every kind of line break and control becomes one space.
_HEADER_JUNK = re.compile(r"[\s\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]+")
_SPACES = re.compile(r"[ \t\u00a0\u2007\u202f]+")
_INVISIBLE = re.compile(r"[\u200b-\u200f\u2060\ufeff]")


def _clean_text(text: str) -> str:
    """CRLF and lone CR -> LF; drop control characters other than \\n and \\t."""
    return _TEXT_JUNK.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


def _one_line(value: str, limit: int = _HEADER_CHARS) -> str:
    """Collapse a header value to one trimmed line: nothing in it can start a new header."""
    return _HEADER_JUNK.sub(" ", value).strip()[:limit].strip()


# --- charsets ---

# Text codecs that reinterpret backslashes or produce surrogates: a sender naming one is lying.
_UNSAFE_CODECS = {"unicode-escape", "raw-unicode-escape", "punycode", "idna", "undefined"}


def _usable_codec(name: str | None) -> str | None:
    """The codec for a declared charset, or None when it is unknown or not a real text charset."""
    if not name:
        return None
    try:
        info = codecs.lookup(str(name).strip().strip('"').lower())
    except (LookupError, ValueError, TypeError):
        return None
    if not getattr(info, "_is_text_encoding", True) or info.name in _UNSAFE_CODECS:
        return None
    return info.name


def _decode_bytes(data: bytes, charset: str | None) -> str:
    """Decode with the declared charset, else UTF-8, else cp1252: charsets are often lies."""
    for name in (_usable_codec(charset), "utf-8"):
        if name:
            try:
                return data.decode(name)
            except (UnicodeError, LookupError, ValueError):
                pass
    return data.decode("cp1252", errors="replace")


# --- headers ---

_ENCODED_WORD = re.compile(r"=\?([^?\s]{1,64})\?([bBqQ])\?([^?\s]*)\?=")


def _decode_word(charset: str, encoding: str, payload: str) -> str | None:
    """Decode one RFC 2047 encoded word; None when it is broken (then it is shown as is)."""
    charset = charset.split("*", 1)[0]  # RFC 2231 language suffix
    try:
        if encoding in "bB":
            raw = base64.b64decode(payload + "=" * (-len(payload) % 4), validate=True)
        else:
            raw = binascii.a2b_qp(payload.encode("utf-8", "surrogateescape"), header=True)
    except (binascii.Error, ValueError):
        return None
    return _decode_bytes(raw, charset)


def _decode_header_words(value: str) -> str:
    """Decode RFC 2047 encoded words; broken ones stay literal instead of raising."""
    out: list[str] = []
    pos = 0
    previous_was_word = False
    for m in _ENCODED_WORD.finditer(value):
        between = value[pos : m.start()]
        # RFC 2047 6.2: whitespace between two adjacent encoded words is not displayed.
        if not (previous_was_word and not between.strip()):
            out.append(between)
        decoded = _decode_word(m.group(1), m.group(2), m.group(3))
        out.append(m.group(0) if decoded is None else decoded)
        previous_was_word = decoded is not None
        pos = m.end()
    out.append(value[pos:])
    return "".join(out)


def _raw_header_values(msg: Message | None, name: str) -> list[str]:
    """Every value of a header as text: 8-bit bytes read as UTF-8 (else cp1252), unfolded."""
    if msg is None:
        return []
    try:
        items = list(msg.raw_items())
    except Exception:
        return []
    values = []
    for key, value in items:
        if not isinstance(key, str) or key.strip().lower() != name:
            continue
        text = value if isinstance(value, str) else str(value)
        # The bytes parser keeps non-ASCII bytes as surrogate escapes: get the bytes back.
        data = text.encode("utf-8", "surrogateescape")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("cp1252", errors="replace")
        values.append(re.sub(r"\r\n|\r|\n", "", text)[:100_000])
    return values


def _header(msg: Message | None, name: str) -> str:
    """First value of a header, unfolded but not RFC 2047-decoded; "" when absent."""
    values = _raw_header_values(msg, name)
    return values[0] if values else ""


_ANGLE_ADDRESS = re.compile(r"<\s*([^<>\s@]{1,64}@[^<>\s@]{1,255})\s*>")
_ADDRESS_LEFT = re.compile(r"[^<>\s\"',;:@()]{1,64}$")
_ADDRESS_RIGHT = re.compile(r"[^<>\s\"',;:@()]{1,255}")


def _address_in_text(raw: str) -> tuple[str, int] | None:
    """(address, where its text starts) for the first address-looking token; linear time."""
    m = _ANGLE_ADDRESS.search(raw)
    if m:
        return m.group(1), m.start()
    at = raw.find("@")
    while at >= 0:
        left = _ADDRESS_LEFT.search(raw, max(0, at - 64), at)
        right = _ADDRESS_RIGHT.match(raw, at + 1)
        if left and right:
            return f"{left.group(0)}@{right.group(0)}", left.start()
        at = raw.find("@", at + 1)
    return None


def _bare_address(value: str) -> str:
    """A lowercased bare address, or "" when `value` is not one."""
    return normalise(value)


_QUOTED_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_COMMENT = re.compile(r"\((?:[^()\\]|\\.)*\)")


def _masked(raw: str) -> str:
    """`raw` with encoded words, quoted strings and comments blanked out, same length.

    What is left is where the mailbox can be: an address inside a display name, a comment
    or an encoded word (`=?utf-8?q?Bob=0D=0Aboss@x?= <bob@x>`) is never the sender.
    """
    masked = _ENCODED_WORD.sub(lambda m: "x" * len(m.group(0)), raw)
    masked = _QUOTED_STRING.sub(lambda m: "x" * len(m.group(0)), masked)
    for _ in range(3):  # nested comments, innermost first
        masked = _COMMENT.sub(lambda m: "x" * len(m.group(0)), masked)
    return masked


def _parse_from(raw: str) -> tuple[str, str]:
    """(display name, address) from a raw From value.

    The address is taken before RFC 2047 decoding and outside quoted strings, comments and
    encoded words, so a display name such as `=?utf-8?q?boss@example.org?= <x@evil>` or
    `boss@example.org <x@evil>` cannot pose as another address: the `<mailbox>` decides.
    """
    raw = raw[:_HEADER_CHARS]  # a real From is short; the address parser is not linear
    masked = _masked(raw)
    m = _ANGLE_ADDRESS.search(masked)
    if m and _bare_address(m.group(1)):
        name = raw[: m.start()].strip()
        if len(name) >= 2 and name.startswith('"') and name.endswith('"'):
            name = email.utils.unquote(name)
        return _display_name(name), _bare_address(m.group(1))
    try:
        pairs = email.utils.getaddresses([raw])
    except Exception:
        pairs = []
    visible = masked.lower()
    for name, addr in pairs:
        address = _bare_address(addr)
        if address and address in visible:  # `ana@x (Ana)`; not an address in a name
            if not name.strip():
                found = _address_in_text(masked)
                name = raw[: found[1]] if found and found[0].lower() == address else ""
            return _display_name(name), address
    found = _address_in_text(masked)
    if found and _bare_address(found[0]):
        return _display_name(raw[: found[1]]), _bare_address(found[0])
    return (_display_name(raw) if "@" not in masked else ""), ""


def _display_name(raw: str) -> str:
    return _one_line(_decode_header_words(raw), 200).strip("\"' ")


def _message_id(raw: str) -> str:
    """The <id> token of a Message-ID header (or the trimmed value if it has no brackets)."""
    m = re.search(r"<[^<>\s\x00-\x1f\x7f]{1,990}>", raw)
    # Control characters never reach the In-Reply-To/References of a mail we send back.
    return m.group(0) if m else _one_line(raw, 998)


# --- parsing the MIME structure ---

_MULTIPART = re.compile(rb"multipart/", re.I)


def _too_nested(data: bytes) -> bool:
    """True for a MIME bomb: the email parser recurses once per multipart level."""
    # Stops scanning at the first declaration past the limit.
    return next(islice(_MULTIPART.finditer(data), MAX_MULTIPARTS, None), None) is not None


def _header_block_size(data: bytes) -> int:
    m = re.search(rb"\r?\n\r?\n", data)
    return m.start() if m else len(data)


def _parse_message(data: bytes) -> tuple[Message | None, bool]:
    """(message, headers_only): mail-parser first, then the stdlib, then headers only."""
    if not _too_nested(data):
        try:
            if _header_block_size(data) > MAX_LIBRARY_HEADER_BYTES:
                raise ValueError("headers too large for mail-parser")  # straight to the stdlib
            parsed = mailparser.parse_from_bytes(data)
            if parsed.message is not None:
                return parsed.message, False
        except Exception:  # mail-parser choked (recursion, a header it dislikes...): degrade
            pass
        try:
            return BytesParser(policy=compat32).parsebytes(data), False
        except Exception:
            pass
    try:
        return BytesParser(policy=compat32).parsebytes(data, headersonly=True), True
    except Exception:
        return None, True


def _content_type(part: Message) -> str:
    try:
        return part.get_content_type().lower()
    except Exception:
        return "text/plain"


def _param(part: Message, name: str) -> str:
    try:
        value = part.get_param(name)
    except Exception:
        return ""
    if isinstance(value, tuple):  # RFC 2231 (charset, language, value)
        value = value[2]
    return str(value or "").strip().strip('"').lower()


def _is_attachment(part: Message) -> bool:
    try:
        disposition = (part.get_content_disposition() or "").lower()
        filename = part.get_filename()
    except Exception:
        return False
    return disposition == "attachment" or (disposition != "inline" and bool(filename))


def _part_text(part: Message) -> str:
    """The decoded text of a leaf part (format=flowed unwrapped)."""
    try:
        payload = part.get_payload(decode=True)
    except Exception:
        payload = None
    if not isinstance(payload, bytes):
        raw = part.get_payload() if not part.is_multipart() else ""
        payload = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else b""
    text = _decode_bytes(payload, _param(part, "charset") or None)
    # Only the start of a body is ever searched; later steps need not see megabytes.
    limit = MAX_HTML_CHARS if _content_type(part) == "text/html" else 2 * MAX_TEXT_CHARS
    text = _clean_text(text[:limit])
    if _content_type(part) == "text/plain" and _param(part, "format") == "flowed":
        text = _unflow(text, delsp=_param(part, "delsp") == "yes")
    return text


def _body_texts(msg: Message) -> tuple[str, str]:
    """(plain, html) of the sender's own message: attachments and attached messages skipped."""
    plain: list[str] = []
    htmls: list[str] = []
    stack = [msg]
    visited = 0
    while stack and visited < MAX_PARTS:
        part = stack.pop()
        visited += 1
        ctype = _content_type(part)
        if part is not msg and _is_attachment(part):
            continue
        if ctype.startswith("message/"):
            continue  # a forwarded or bounced message is not what the sender wrote
        payload = part.get_payload()
        if isinstance(payload, list):
            stack.extend(p for p in reversed(payload) if isinstance(p, Message))
            continue
        if ctype.startswith("multipart/"):
            # Boundary never found: the parser left the body as one string. Keep it as
            # text rather than lose the reply.
            if isinstance(payload, str):
                raw = payload.encode("utf-8", "surrogateescape")
                text = _decode_bytes(raw, _param(part, "charset") or None)
                plain.append(_clean_text(text[: 2 * MAX_TEXT_CHARS]))
            continue
        if ctype == "text/plain":
            plain.append(_part_text(part))
        elif ctype == "text/html":
            htmls.append(_part_text(part))
    return "\n".join(plain), "\n".join(htmls)


def _boundary(part: Message) -> bytes:
    try:
        value = part.get_boundary()
    except Exception:
        return b""
    return str(value or "").encode("utf-8", "surrogateescape").rstrip(b" \t")


def _flat_body_texts(msg: Message) -> tuple[str, str]:
    """(plain, html) like `_body_texts`, for a message parsed headers only; no recursion.

    One linear pass over the body: a stack of the open boundaries tells delimiter lines
    from text, each part's header block is parsed on its own, and only text leaves that are
    not attachments nor inside a message/* part are kept. At most MAX_PARTS parts are read.
    """
    ctype = _content_type(msg)
    if not ctype.startswith("multipart/"):
        if ctype == "text/html":
            return "", _part_text(msg)
        return (_part_text(msg), "") if ctype == "text/plain" else ("", "")
    payload = msg.get_payload()
    data = payload.encode("utf-8", "surrogateescape") if isinstance(payload, str) else b""
    stack: list[bytes] = []
    open_at: dict[bytes, int] = {}  # boundary -> its topmost position in the stack
    shadowed: list[int | None] = []  # the position a re-used boundary had before

    def push(boundary: bytes) -> None:
        shadowed.append(open_at.get(boundary))
        open_at[boundary] = len(stack)
        stack.append(boundary)

    def pop() -> None:
        boundary, previous = stack.pop(), shadowed.pop()
        if previous is None:
            del open_at[boundary]
        else:
            open_at[boundary] = previous

    plain: list[str] = []
    htmls: list[str] = []
    head: list[bytes] = []
    body: list[bytes] = []
    state = "skip"  # skip (preamble, epilogue, non-text part) | head | text
    parts = 0
    top = _boundary(msg)
    if top:
        push(top)

    def flush() -> None:
        if state == "text":
            section = b"\n".join(head) + b"\n\n" + b"".join(body)
            leaf = BytesParser(policy=compat32).parsebytes(section)
            text = _part_text(leaf)
            (htmls if _content_type(leaf) == "text/html" else plain).append(text)

    for line in io.BytesIO(data):
        bare = line.rstrip(b"\r\n")
        if bare.startswith(b"--") and stack:
            name = bare[2:].rstrip(b" \t")
            level, closing = open_at.get(name), False
            if level is None and name.endswith(b"--"):
                level, closing = open_at.get(name[:-2]), True
            if level is not None:
                flush()
                while len(stack) > level + 1:
                    pop()
                if closing:
                    pop()
                    state = "skip"
                    continue
                parts += 1
                if parts > MAX_PARTS:
                    state = "skip"
                    break
                state, head, body = "head", [], []
                continue
        if state == "head":
            if bare.strip():
                head.append(bare)
                continue
            part = BytesParser(policy=compat32).parsebytes(b"\n".join(head) + b"\n\n",
                                                          headersonly=True)
            kind = _content_type(part)
            if kind.startswith("multipart/"):
                boundary = _boundary(part)
                if boundary:
                    push(boundary)
                state = "skip"  # its preamble; its parts follow
            elif kind in ("text/plain", "text/html") and not _is_attachment(part):
                state = "text"
            else:
                state = "skip"  # message/*, attachments, images...
        elif state == "text":
            body.append(line)
    flush()
    if parts == 0 and not _MULTIPART.search(data):
        # Boundary never found: keep the body as text, as `_body_texts` does; unless the body
        # is itself full of nested multipart declarations (a bomb without a usable top
        # boundary): that is scaffolding, not what the sender wrote.
        text = _decode_bytes(data, _param(msg, "charset") or None)
        plain.append(_clean_text(text[: 2 * MAX_TEXT_CHARS]))
    return "\n".join(plain), "\n".join(htmls)


def _unflow(text: str, delsp: bool) -> str:
    """Undo RFC 3676 format=flowed: join soft-broken lines, keep quote depth."""
    out: list[str] = []
    pieces: list[str] = []  # the logical line being joined
    depth_of_pieces = 0
    for line in text.split("\n"):
        stripped = line.lstrip(">")
        depth = len(line) - len(stripped)
        if stripped.startswith(" "):
            stripped = stripped[1:]  # space-stuffing
        soft = stripped.endswith(" ") and stripped != "-- "
        if soft and delsp:
            stripped = stripped[:-1]
        if pieces and depth != depth_of_pieces:
            out.append(_flowed_line(pieces, depth_of_pieces))
            pieces = []
        depth_of_pieces = depth
        pieces.append(stripped)
        if not soft:
            out.append(_flowed_line(pieces, depth))
            pieces = []
    if pieces:
        out.append(_flowed_line(pieces, depth_of_pieces))
    return "\n".join(out)


def _flowed_line(pieces: list[str], depth: int) -> str:
    return ("> " * depth if depth else "") + "".join(pieces)


# --- auto replies and bounces ---


def _header_token(value: str) -> str:
    """The keyword of a structured header: `no (sent by hand); x=y` -> `no` (RFC 3834 CFWS)."""
    for _ in range(3):  # nested comments, innermost first
        value = _COMMENT.sub(" ", value)
    return value.split(";", 1)[0].strip().lower()


def _classify(
    msg: Message | None, envelope_from: str | None, sender: str
) -> tuple[bool, bool, str]:
    """(is_auto_reply, is_bounce, reason). Bounces first: a bounce is not an auto reply."""
    ctype = _content_type(msg) if msg is not None else ""
    report_type = _param(msg, "report-type") if msg is not None else ""
    if ctype == "multipart/report" and report_type == "delivery-status":
        return False, True, "Content-Type: multipart/report; report-type=delivery-status"
    failed = _raw_header_values(msg, "x-failed-recipients")
    if failed:
        return False, True, _one_line(f"X-Failed-Recipients: {failed[0]}", 200)
    if sender.partition("@")[0] == "mailer-daemon":
        return False, True, _one_line(f"From: {sender}", 200)

    for value in _raw_header_values(msg, "auto-submitted"):
        token = _header_token(value)
        if token != "no":  # RFC 3834: anything but "no" is machine-generated
            return True, False, _one_line(f"Auto-Submitted: {token}", 200)
    # Vacation responders that predate RFC 3834. X-Auto-Response-Suppress is deliberately
    # absent: it is set by senders asking *others* not to auto-reply.
    for name in ("X-Autoreply", "X-Autorespond", "X-Autoreply-From", "X-Mail-Autoreply"):
        for value in _raw_header_values(msg, name.lower()):
            if value.strip().lower() not in ("no", "false", "0"):
                return True, False, _one_line(f"{name}: {value.strip()}", 200)
    for value in _raw_header_values(msg, "precedence"):
        token = _header_token(value)
        if token in ("bulk", "junk", "auto_reply"):  # not "list": people reply through lists
            return True, False, f"Precedence: {token}"
    if ctype == "multipart/report":  # read receipts (disposition-notification) and the like
        return (
            True,
            False,
            _one_line(f"Content-Type: multipart/report; report-type={report_type}", 200),
        )
    if envelope_from is not None:
        if envelope_from.strip() in ("", "<>"):
            return True, False, "empty envelope sender (MAIL FROM:<>)"
    elif any(v.strip() == "<>" for v in _raw_header_values(msg, "return-path")):
        # Read back from a mailbox: the delivering MTA recorded the empty envelope sender here.
        return True, False, "Return-Path: <>"
    return False, False, ""


_DSN_FIELD = re.compile(r"^([A-Za-z-]+)[ \t]*:[ \t]*(.*)$", re.M)


def _dsn_address(value: str) -> str:
    """`rfc822; gone@example.org` -> `gone@example.org`."""
    return _bare_address(value.split(";", 1)[-1])


def _dsn_recipients(part: Message, reasons: list[str] | None = None) -> list[str]:
    """Failed recipients of one message/delivery-status part (per-recipient blocks).

    `reasons`, when given, receives each failure's Status and Diagnostic-Code (RFC 3464).
    """
    blocks: list[dict[str, str]] = []
    payload = part.get_payload()
    if isinstance(payload, list):
        for block in payload:
            if isinstance(block, Message):
                fields = {}
                for name in ("final-recipient", "original-recipient", "action", "status",
                             "diagnostic-code"):
                    value = _header(block, name)
                    if value:
                        fields[name] = value
                blocks.append(fields)
    if not any("final-recipient" in b or "original-recipient" in b for b in blocks):
        # Not parsed into blocks (e.g. transfer-encoded): read the fields from the text.
        blocks = []
        for chunk in re.split(r"\n\s*\n", _part_text(part)):
            fields = {}
            for m in _DSN_FIELD.finditer(chunk):
                fields.setdefault(m.group(1).lower(), m.group(2).strip())
            blocks.append(fields)
    found = []
    for fields in blocks:
        action = fields.get("action", "failed").split(";", 1)[0].strip().lower()
        if action != "failed":  # delayed / delivered / relayed are not failures
            continue
        for name in ("final-recipient", "original-recipient"):
            address = _dsn_address(fields.get(name, ""))
            if address:
                found.append(address)
        if reasons is not None:
            status = fields.get("status", "").strip()
            diagnostic = " ".join(fields.get("diagnostic-code", "").split())
            said = "; ".join(x for x in (f"status {status}" if status else "", diagnostic) if x)
            if said:
                reasons.append(_one_line(said, 300))
    return found


def _bounced_recipients(msg: Message | None,
                        reasons: list[str] | None = None) -> tuple[str, ...]:
    """Failed recipients named by the DSN parts and X-Failed-Recipients, deduplicated."""
    found: list[str] = []
    if msg is not None:
        stack = [msg]
        visited = 0
        while stack and visited < MAX_PARTS:
            part = stack.pop()
            visited += 1
            ctype = _content_type(part)
            if ctype == "message/delivery-status":
                found.extend(_dsn_recipients(part, reasons))
                continue
            if ctype.startswith("message/") or ctype == "text/rfc822-headers":
                continue  # the returned original names its own recipients, not the failed ones
            payload = part.get_payload()
            if isinstance(payload, list):
                stack.extend(p for p in reversed(payload) if isinstance(p, Message))
        for value in _raw_header_values(msg, "x-failed-recipients"):
            for item in value.split(","):
                address = _bare_address(item)
                if address:
                    found.append(address)
    return tuple(dict.fromkeys(found))


# --- HTML ---

_HTML_SKIP = {"script", "style", "head", "title", "noscript", "template", "xml", "object"}
_HTML_BLOCK = {
    "address", "article", "aside", "blockquote", "center", "dd", "div", "dl", "dt",
    "fieldset", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header",
    "hr", "li", "main", "nav", "ol", "p", "pre", "section", "table", "tbody", "td", "tfoot",
    "th", "thead", "tr", "ul",
}  # fmt: skip
_HTML_RAW_TEXT = {"script", "style"}  # their content is text: a "<script>" inside does not nest
_HTML_VOID = {
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param",
    "source", "track", "wbr",
}  # fmt: skip
# Outlook (web, new, Mac) starts the quoted history with these ids: everything after is history.
_HTML_STOP_IDS = (
    "divrplyfwdmsg",
    "appendonsend",
    "mail-editor-reference-message-container",
    "stopspelling",
)


class _HTMLText(HTMLParser):
    """Collects the visible text of the sender's own part of an HTML email."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip_tag: str | None = None
        self.skip_depth = 0
        self.stopped = False
        self.pending_newline = False
        self.pre = 0

    def _at_line_start(self) -> bool:
        return (
            self.pending_newline
            or not self.out
            or self.out[-1].endswith("\n")
            or self.out[-1] == "- "
        )

    def _emit(self, text: str) -> None:
        if self.pending_newline:
            if self.out and not self.out[-1].endswith("\n"):
                self.out.append("\n")
            self.pending_newline = False
        self.out.append(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.stopped:
            return
        if self.skip_tag is not None:
            if self.skip_tag == "head" and tag == "body":
                self.skip_tag = None  # <head> left open: the body still counts
            else:
                if tag == self.skip_tag and tag not in _HTML_VOID and tag not in _HTML_RAW_TEXT:
                    self.skip_depth += 1
                return
        attributes = {k.lower(): (v or "") for k, v in attrs}
        element_id = attributes.get("id", "").strip().lower()
        if element_id and any(element_id.endswith(i) for i in _HTML_STOP_IDS):
            self.stopped = True
            return
        classes = attributes.get("class", "").lower().split()
        quoted = any(c.startswith("gmail_quote") or c == "yahoo_quoted" for c in classes)
        if tag in _HTML_SKIP or tag == "blockquote" or quoted:
            if tag not in _HTML_VOID:
                self.skip_tag, self.skip_depth = tag, 1
            return
        if tag == "br":
            self._emit("\n")
        elif tag in _HTML_BLOCK:
            self.pending_newline = bool(self.out)
            if tag == "li":
                self._emit("- ")
        if tag == "pre":
            self.pre += 1

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in _HTML_SKIP:
            self.handle_endtag(tag)
        # else: HTML ignores the slash: `<script/>` opens a script running to `</script>`.

    def handle_endtag(self, tag: str) -> None:
        if self.stopped:
            return
        if self.skip_tag is not None:
            if tag == self.skip_tag:
                self.skip_depth -= 1
                if self.skip_depth <= 0:
                    self.skip_tag = None
            return
        if tag in _HTML_BLOCK:
            self.pending_newline = bool(self.out)
        if tag == "pre":
            self.pre = max(0, self.pre - 1)

    def handle_data(self, data: str) -> None:
        if self.stopped or self.skip_tag is not None:
            return
        if not self.pre:
            data = re.sub(r"[ \t\r\n\f]+", " ", data)  # HTML whitespace; &nbsp; is not one
            if self._at_line_start():
                data = data.lstrip(" ")
        if data:
            self._emit(data)


def html_to_text(html_text: str) -> str:
    """Visible text of an HTML body: scripts/styles/quoted history dropped, blocks -> lines."""
    try:
        source = _clean_text(str(html_text)[:MAX_HTML_CHARS])
        parser = _HTMLText()
        parser.feed(source)
        parser.close()
        text = "".join(parser.out)
    except Exception:  # html.parser gave up on broken markup: strip tags the crude way
        try:
            source = str(html_text)[:MAX_TEXT_CHARS]  # the regexes below are not linear
            source = re.sub(r"(?is)<(script|style|head)\b.*?</\1\s*>", " ", source)
            source = re.sub(r"(?i)<br\s*/?>|</(p|div|li|tr|h\d)\s*>", "\n", source)
            text = html.unescape(re.sub(r"<[^>]*>", "", source))
        except Exception:
            return ""
    text = _clean_text(text).replace("\u00a0", " ")
    lines = [line.rstrip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


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
