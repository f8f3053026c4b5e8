"""Email addresses: one parse, one validation, one normal form, used everywhere.

`normalise` finds the address in what people and mail clients write ("Ana <ana@x.org>",
"<ana@x.org>", "mailto:ana@x.org") and lowercases it, for lookups and comparisons.
`problem` says why delivery would refuse an address, so that contacts.yaml, the CLI,
declarations, reply commands and escalations accept exactly what can be delivered.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .errors import InvalidInput

__all__ = ["Rules", "STRICT", "check", "is_valid", "normalise", "problem", "rules_of"]


@dataclass(frozen=True)
class Rules:
    """What the configuration allows beyond plain ASCII addresses at dotted domains."""

    smtputf8: bool = False  # [outbound] smtputf8: the relay takes non-ASCII addresses
    allow_local_domains: bool = False  # `ana@localhost`: for local test setups


STRICT = Rules()


def rules_of(config: Any) -> Rules:
    """The address rules a Config sets (`[outbound] smtputf8`, `allow_local_domains`)."""
    outbound = getattr(config, "outbound", None)
    return Rules(smtputf8=bool(getattr(outbound, "smtputf8", False)),
                 allow_local_domains=bool(getattr(config, "allow_local_domains", False)))


# Anything that cannot be inside a bare address; what is left is checked by `problem`.
_ATOM = r"[^@\s<>()\[\],;:\"\x00-\x1f\x7f-\x9f]+"
_SHAPE = re.compile(_ATOM + "@" + _ATOM)
_ANGLE = re.compile(r"<\s*([^<>]*?)\s*>")
# RFC 5322 atext: the characters of an unquoted local part, between single dots.
_ATEXT = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def normalise(value: str) -> str:
    """The lowercased bare address in `value`, or "" when there is none (never raises)."""
    text = str(value).strip()
    found = _ANGLE.findall(text)
    if found:  # "Name <addr>": the last bracketed part is the mailbox
        text = found[-1]
    text = text.strip().strip("<>").strip().lower()
    if text.startswith("mailto:"):
        text = text[len("mailto:"):]
    return text if len(text) <= 320 and _SHAPE.fullmatch(text) else ""


def lookup_key(value: str) -> str:
    """The key a person or list member is found by: the bare address, else the text itself."""
    return normalise(value) or str(value).strip().lower()


def problem(address: str, rules: Rules = STRICT) -> str | None:
    """Why delivery would refuse the bare `address`, or None when it is fine."""
    if any(c in address for c in "\r\n\t "):
        return "it contains a space or a line break"
    if address.count("@") != 1:
        return "it needs exactly one @"
    local, domain = address.rsplit("@", 1)
    if not local or not domain:
        return "the part before or after the @ is empty"
    if len(address) > 254 or len(local) > 64:
        return "it is too long (at most 64 characters before the @, 254 in all)"
    if not address.isascii() and not rules.smtputf8:
        return ("it has non-ASCII characters; set `smtputf8 = true` under [outbound] if "
                "your relay supports SMTPUTF8")
    if local.startswith(".") or local.endswith(".") or ".." in local:
        return "a dot may not start or end the part before the @, nor follow another dot"
    for atom in local.split("."):
        if not _ATEXT.fullmatch(atom) and not (rules.smtputf8 and _utf8_atom(atom)):
            bad = sorted({c for c in atom if not _ATEXT.fullmatch(c) and c.isascii()})
            return (f"{''.join(bad)!r} cannot appear unquoted before the @" if bad
                    else "the part before the @ has characters mail cannot carry")
    labels = domain.lower().split(".")
    if domain.startswith("[") or not all(
            _LABEL.fullmatch(label) or (rules.smtputf8 and _utf8_label(label))
            for label in labels):
        return f"{domain!r} is not a domain name"
    if len(labels) < 2 and not rules.allow_local_domains:
        return (f"{domain!r} has no dot; set `allow_local_domains = true` in mailflow.toml "
                "for local test setups")
    return None


def _utf8_atom(atom: str) -> bool:
    return bool(atom) and all(_ATEXT.fullmatch(c) or not c.isascii() for c in atom) \
        and all(c.isprintable() for c in atom)


def _utf8_label(label: str) -> bool:
    return bool(label) and not label.startswith("-") and not label.endswith("-") and all(
        c.isalnum() or c == "-" for c in label)


def is_valid(address: str, rules: Rules = STRICT) -> bool:
    """True when `address` is a bare address that delivery accepts."""
    return problem(address, rules) is None


def check(value: str, what: str = "address", rules: Rules = STRICT) -> str:
    """The lowercased bare address in `value`, or InvalidInput saying what is wrong."""
    if any(c in str(value) for c in "\r\n"):
        raise InvalidInput(f"{what} {value!r} is not an email address: it contains a line break")
    address = normalise(value)
    if not address:
        raw = str(value).strip()
        why = problem(raw.lower(), rules) if "@" in raw else "it has no @"
        raise InvalidInput(f"{what} {value!r} is not an email address: "
                           f"{why or 'write it as name@example.org'}")
    why = problem(address, rules)
    if why:
        raise InvalidInput(f"{what} {value!r} is not an email address: {why}")
    return address
