"""The one place that reads the time. Everything else takes `now` as a parameter."""

from __future__ import annotations

import os
import re
import time
from datetime import datetime, timedelta, timezone

from .errors import InvalidInput

# The one place durations are read and written ("30m", "1 hour 30 min", "2d"). A unit is
# known by its first letter; the look-ahead keeps "5 mo" from reading as five minutes.
_DURATION = re.compile(
    r"(\d+)(weeks?|w|days?|d|hours?|hrs?|h|minutes?|mins?|m|seconds?|secs?|s)(?![a-z])", re.I)
_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}


def now() -> datetime:
    """Current time in UTC, or `$MAILFLOW_NOW` (ISO 8601) when set, for replay and tests."""
    fixed = os.environ.get("MAILFLOW_NOW")
    if fixed:
        return parse_time(fixed, what="MAILFLOW_NOW")
    return datetime.now(timezone.utc)


def parse_time(text: str, what: str = "time") -> datetime:
    """Parse an ISO 8601 timestamp; a naive one is taken as UTC. Result is aware UTC."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(
            f"{what}: {text!r} is not an ISO 8601 time; write e.g. 2026-11-24T10:00:00Z"
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def parse_duration(text: str, what: str = "duration") -> timedelta:
    """Parse "30m", "1h", "1h30m", "2d", "45 min", "1 hour 30 minutes" into a timedelta (> 0)."""
    s = str(text).strip().lower().replace(" ", "")
    pos, total = 0, 0
    for m in _DURATION.finditer(s):
        if m.start() != pos:
            break
        total += int(m.group(1)) * _UNITS[m.group(2)[0].lower()]
        pos = m.end()
    if not s or pos != len(s) or total <= 0:
        raise InvalidInput(f"{what}: {text!r} is not a duration; write e.g. 30m, 1h, 1h30m, 1d")
    try:
        return timedelta(seconds=total)
    except OverflowError:  # more days than a timedelta holds: a typo, never a real wait
        raise InvalidInput(f"{what}: {text!r} is far too long; write e.g. 30m, 1h, 1d") from None


def format_duration(delta: timedelta) -> str:
    """Render a timedelta for humans: "1 d 2 h 5 min", "45 min"; never negative."""
    # A clock that stepped back must not print "-3 min" in an email.
    minutes = max(0, int(delta.total_seconds() // 60))
    days, rem = divmod(minutes, 1440)
    hours, mins = divmod(rem, 60)
    parts = [f"{days} d"] if days else []
    if hours:
        parts.append(f"{hours} h")
    if mins or not parts:
        parts.append(f"{mins} min")
    return " ".join(parts)


def compact_duration(delta: timedelta, one_unit: bool = False) -> str:
    """A duration as written in configuration: "30m", "4h", "1d", "1h30m".

    `one_unit` gives the largest single unit that divides it ("90m", not "1h30m"): the
    spelling of escalation keys in the due table, which must not change between versions.
    """
    seconds = max(0, int(delta.total_seconds()))
    units = (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
    if one_unit:
        return next((f"{seconds // size}{unit}" for unit, size in units[1:]
                     if seconds % size == 0 and seconds), "0m")
    parts = []
    for unit, size in units:
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0m"


def as_utc(value: datetime) -> datetime:
    """Return `value` as an aware UTC datetime (naive values from SQLite are UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def monotonic() -> float:
    """Seconds on a clock that never jumps: for time budgets and rate limits, not due times."""
    return time.monotonic()
