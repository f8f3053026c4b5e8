"""Text hygiene, charsets and headers of a reply: decoded safely, never trusted."""

from __future__ import annotations

import base64
import binascii
import codecs
import email.utils
import re
from email.message import Message

from ..addresses import normalise
from .limits import _HEADER_CHARS

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
    if m and normalise(m.group(1)):
        name = raw[: m.start()].strip()
        if len(name) >= 2 and name.startswith('"') and name.endswith('"'):
            name = email.utils.unquote(name)
        return _display_name(name), normalise(m.group(1))
    try:
        pairs = email.utils.getaddresses([raw])
    except Exception:
        pairs = []
    visible = masked.lower()
    for name, addr in pairs:
        address = normalise(addr)
        if address and address in visible:  # `ana@x (Ana)`; not an address in a name
            if not name.strip():
                found = _address_in_text(masked)
                name = raw[: found[1]] if found and found[0].lower() == address else ""
            return _display_name(name), address
    found = _address_in_text(masked)
    if found and normalise(found[0]):
        return _display_name(raw[: found[1]]), normalise(found[0])
    return (_display_name(raw) if "@" not in masked else ""), ""


def _display_name(raw: str) -> str:
    return _one_line(_decode_header_words(raw), 200).strip("\"' ")


def _message_id(raw: str) -> str:
    """The <id> token of a Message-ID header (or the trimmed value if it has no brackets)."""
    m = re.search(r"<[^<>\s\x00-\x1f\x7f]{1,990}>", raw)
    # Control characters never reach the In-Reply-To/References of a mail we send back.
    return m.group(0) if m else _one_line(raw, 998)
