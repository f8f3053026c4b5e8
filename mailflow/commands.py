"""`key: value` lines at the top of an email: reply commands and declaration fields.

One parser for both: each line at the top is read on its own and is either a command
(`severity: P2`), a command whose value cannot be used (`next update: 25:00`, refused
with the reason), a look-alike (`severty: P3`, `sevrity P2`: held, with the closest
command), or the first line of the text (and everything below it is text). A bad line
never turns the lines below it into text.

Also the one table of severity and impact spellings, used by the CLI, declarations and
replies alike. Pure: no I/O, no database.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from datetime import timedelta

from .addresses import Rules, check
from .clock import compact_duration, parse_duration
from .errors import InvalidInput

__all__ = [
    "BARE",
    "DECLARATION_FIELDS",
    "IMPACT_ALIASES",
    "MAX_NEXT_UPDATE",
    "REPLY_COMMANDS",
    "SEVERITY_ALIASES",
    "Command",
    "LookAlike",
    "Parsed",
    "Refused",
    "impact_of",
    "parse",
    "parse_commands",
    "severity_of",
]

# --- the one table of spellings ---------------------------------------------------------

SEVERITY_ALIASES = {
    "p0": "P0", "0": "P0", "critical": "P0",
    "p1": "P1", "1": "P1", "high": "P1",
    "p2": "P2", "2": "P2", "medium": "P2",
    "p3": "P3", "3": "P3", "low": "P3",
}  # fmt: skip
IMPACT_ALIASES = {
    "outage": "outage", "downtime": "outage", "complete downtime": "outage",
    "complete outage": "outage", "full outage": "outage", "down": "outage",
    "degraded": "degraded", "degradation": "degraded",
}  # fmt: skip


def _words(value: str) -> str:
    return re.sub(r"[\s_-]+", " ", str(value).strip().lower())


def severity_of(value: str) -> str | None:
    """`p1`, `P 1`, `1`, `high` → `P1`; None for anything else."""
    return SEVERITY_ALIASES.get(re.sub(r"\s+", "", str(value).strip().lower())) \
        or SEVERITY_ALIASES.get(_words(value))


def impact_of(value: str) -> str | None:
    """`downtime`, `complete outage` → `outage`; `degradation` → `degraded`; else None."""
    return IMPACT_ALIASES.get(_words(value))


# --- what a line can be -----------------------------------------------------------------

REPLY_COMMANDS = ("severity", "impact", "eta", "next update", "send now", "resolved", "reopen",
                  "lead", "communicator", "scribe", "impacted", "publish")
DECLARATION_FIELDS = ("service", "severity", "impact", "impacted", "eta", "started",
                      "next steps", "lead")
BARE = ("send now", "resolved", "reopen", "publish")  # commands without a value
# Bare commands that may also take one: `publish` or `publish: other words`.
OPTIONAL_VALUE = ("publish",)
# Headings of a status report (mailflow.report): text, never a command or a look-alike.
REPORT_HEADINGS = ("learned", "tried", "now", "left")
# Stakeholders expect news at least this often; a longer wait is a typo (3000000d).
MAX_NEXT_UPDATE = timedelta(days=30)
# Fields whose value is free text: without a colon, "ETA unknown so far" is a sentence.
_FREE_TEXT = ("eta", "service", "started", "next steps")
# How alike a word must be to a command's name to be taken for a misspelt command.
_CUTOFF = 0.8
# Addresses are checked for their form here; the configuration's rules apply when used.
_FORM = Rules(smtputf8=True, allow_local_domains=True)


@dataclass(frozen=True)
class Command:
    """One command: `severity: P2` -> Command("severity", "P2")."""

    name: str
    value: str


@dataclass(frozen=True)
class Refused:
    """A command line whose value cannot be used, and why."""

    line: str
    name: str
    reason: str


@dataclass(frozen=True)
class LookAlike:
    """A line that looks like a command but is none; `suggestion` is the closest one."""

    line: str
    suggestion: str


@dataclass(frozen=True)
class Parsed:
    """The lines at the top, read one by one, and the text below them."""

    commands: tuple[Command, ...] = ()
    refused: tuple[Refused, ...] = ()
    lookalikes: tuple[LookAlike, ...] = ()
    text: str = ""
    lines: tuple[str, ...] = ()  # the command-looking lines at the top, as written


_KEY_VALUE = re.compile(r"^([A-Za-z][A-Za-z _-]{0,30}?)\s*:(.*)$")
_JUNK = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ud800-\udfff\ufeff]")
_INVISIBLE = re.compile(r"[\u200b-\u200f\u202a-\u202e\u2060\u2066-\u2069\ufeff]")
_CLOCK = re.compile(r"^(\d{1,2})[:h](\d{2})(?:\s*(utc|z))?$", re.I)


def _one_line(value: str, limit: int) -> str:
    return re.sub(r"[\s\x00-\x1f\x7f-\x9f\u2028\u2029]+", " ", value).strip()[:limit].strip()


def _address(value: str, what: str) -> str:
    return check(value.strip(), f"`{what}:`", _FORM)


def next_update_value(value: str) -> str:
    """`9:05` → `09:05`, `9:05 UTC` → `09:05 UTC`, `1 hour` → `1h`; InvalidInput if neither."""
    value = _one_line(value, 50)
    m = _CLOCK.match(value)
    if m:
        hour, minute = int(m.group(1)), int(m.group(2))
        if hour > 23 or minute > 59:
            raise InvalidInput(f"{value!r} is not a time of day: write HH:MM from 00:00 to "
                               "23:59, or a duration such as 30m")
        return f"{hour:02d}:{minute:02d}" + (" UTC" if m.group(3) else "")
    duration = parse_duration(value, what="next update")
    if duration > MAX_NEXT_UPDATE:
        raise InvalidInput(f"{value!r} is too far ahead: the next communication must be "
                           f"within {MAX_NEXT_UPDATE.days} days")
    return compact_duration(duration)


def _values(name: str, value: str) -> list[str]:
    """The normalised values of one command; InvalidInput saying why a value is unusable."""
    value = value.strip()
    if name in OPTIONAL_VALUE:
        return [_one_line(value, 2000)]
    if name in BARE:
        return [""]
    if not value:
        raise InvalidInput(f"`{name}:` needs a value")
    if name == "severity":
        found = severity_of(value)
        if found is None:
            raise InvalidInput(f"{value!r} is not a severity: use P0, P1, P2 or P3")
        return [found]
    if name == "impact":
        found = impact_of(value)
        if found is None:
            raise InvalidInput(f"{value!r} is not an impact: use outage or degraded")
        return [found]
    if name == "next update":
        return [next_update_value(value)]
    if name in ("lead", "communicator", "scribe"):
        if value.lower() == "me":
            return ["me"]
        return [_address(value, name)]
    if name == "impacted":
        entries = [e.strip().lstrip("+").strip() for e in re.split(r"[,;]", value)]
        # One bad entry refuses the line: nothing half-applied.
        return [f"+{_address(e, name)}" for e in entries if e]
    return [_one_line(value, 300 if name in ("eta", "service") else 2000)]


def _closest(word: str, names: tuple[str, ...]) -> str | None:
    found = difflib.get_close_matches(word, names, n=1, cutoff=_CUTOFF)
    return found[0] if found else None


def _read_line(line: str, names: tuple[str, ...]
               ) -> Command | list[Command] | Refused | LookAlike | None:
    """What one line at the top is; None: it is text (and so is everything below)."""
    bare = _words(_INVISIBLE.sub("", line)).rstrip(".!").strip()
    if bare.split(" ")[0].rstrip(":") in REPORT_HEADINGS:
        return None  # `Tried: …`, `Learned:`: the text of a status report starts here
    if bare in names and bare in BARE:
        return Command(bare, "")
    m = _KEY_VALUE.match(_INVISIBLE.sub("", line).strip())
    if m:
        name = _words(m.group(1))
        if name in names:
            if name in BARE and name not in OPTIONAL_VALUE:
                return LookAlike(line.strip(), name)  # `resolved: yes`: say it alone
            try:
                return [Command(name, v) for v in _values(name, m.group(2))]
            except InvalidInput as exc:
                return Refused(line.strip(), name, str(exc))
        close = _closest(name, names)
        return LookAlike(line.strip(), close) if close else None
    # No colon: a misspelt bare command (`sned now`), or a command's name without its colon
    # followed by a value that command would take (`sevrity P2`, `severity P2`).
    close = _closest(bare, tuple(n for n in names if n in BARE))
    if close:
        return LookAlike(line.strip(), close)
    words = bare.split(" ")
    for size in (2, 1):
        head, rest = " ".join(words[:size]), line.strip().split(None, size)[size:]
        if len(words) <= size or not rest:
            continue
        close = head if head in names else _closest(head, names)
        if close and close not in BARE and close not in _FREE_TEXT:
            try:
                _values(close, rest[0])
            except InvalidInput:
                continue
            return LookAlike(line.strip(), close)
    return None


def parse(text: str, names: tuple[str, ...] = REPLY_COMMANDS) -> Parsed:
    """Read the lines at the top of `text` one by one; see the module docstring."""
    try:
        lines = _JUNK.sub("", str(text).replace("\r\n", "\n").replace("\r", "\n")).split("\n")
    except Exception:
        return Parsed(text=str(text))
    commands: list[Command] = []
    refused: list[Refused] = []
    lookalikes: list[LookAlike] = []
    seen: list[str] = []
    i = 0
    while i < len(lines):
        if not _INVISIBLE.sub("", lines[i]).strip():
            i += 1
            continue
        found = _read_line(lines[i], names)
        if found is None:
            break
        seen.append(lines[i].strip())
        i += 1
        if isinstance(found, Refused):
            refused.append(found)
        elif isinstance(found, LookAlike):
            lookalikes.append(found)
        else:
            found = found if isinstance(found, list) else [found]
            commands.extend(found)
            if found and found[0].name == "resolved":
                break  # the rest is the resolution steps, commands or not
    from .quotes import tidy  # its tables take ~20 ms to compile: only replies need them

    return Parsed(tuple(commands), tuple(refused), tuple(lookalikes), tidy(lines[i:]),
                  tuple(seen))


def parse_commands(text: str) -> tuple[tuple[Command, ...], str]:
    """Reply commands from the top of the text and the text that remains (refused lines
    and look-alikes are neither)."""
    parsed = parse(text)
    return parsed.commands, parsed.text
