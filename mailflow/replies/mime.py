"""The MIME walk: which part is the body, decoded, with format=flowed undone."""

from __future__ import annotations

import io
import re
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from itertools import islice

import mailparser

from .headers import _clean_text, _decode_bytes
from .limits import (
    MAX_HTML_CHARS,
    MAX_LIBRARY_HEADER_BYTES,
    MAX_MULTIPARTS,
    MAX_PARTS,
    MAX_TEXT_CHARS,
)

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
