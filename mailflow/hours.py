"""Working hours: when mail that may wait for the morning is sent, in each recipient's zone."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

from .clock import as_utc

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# Mail that may wait: milestone-only lists at the lowest severity (a low-priority incident
# at 4:00 does not wake anybody); everything else goes at once.
DEFAULT_HOLD_MILESTONES = frozenset({"P3"})


@dataclass(frozen=True)
class WorkingHours:
    """Office hours (`start`–`end` on `days`, 0 = Monday) in `timezone` unless told otherwise."""

    start: time = time(8, 0)
    end: time = time(18, 0)
    days: frozenset[int] = frozenset(range(5))
    timezone: str = "UTC"  # for an address whose owner has no time zone in contacts.yaml

    def opens_at(self, at: datetime, zone: str | None = None) -> datetime | None:
        """None during working hours at `at` in `zone`; else when they next begin (UTC)."""
        try:
            tz = ZoneInfo(zone or self.timezone)
        except (KeyError, ValueError):
            tz = ZoneInfo(self.timezone)
        local = as_utc(at).astimezone(tz)
        if local.weekday() in self.days and self.start <= local.time() < self.end:
            return None
        day = local.date()
        if local.time() >= self.start or local.weekday() not in self.days:
            day += timedelta(days=1)
        for _ in range(8):
            if day.weekday() in self.days:
                opening = datetime.combine(day, self.start, tzinfo=tz)
                return opening.astimezone(timezone.utc)
            day += timedelta(days=1)
        return None  # no working day at all: nothing is ever held


def parse_hours(text: str) -> tuple[time, time] | None:
    """`08:00-18:00` (or with an en dash) → (start, end); None if it is not that."""
    m = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*[-–]\s*(\d{1,2}):(\d{2})\s*", text)
    if not m:
        return None
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    if h1 > 23 or h2 > 24 or m1 > 59 or m2 > 59 or (h2 == 24 and m2):
        return None
    start = time(h1, m1)
    end = time(23, 59, 59, 999999) if h2 == 24 else time(h2, m2)
    return (start, end) if start < end else None


def parse_days(text: str) -> frozenset[int] | None:
    """`Mon-Fri`, `Mon,Wed,Fri` or `Sun-Thu` → weekday numbers; None if unreadable."""
    out: set[int] = set()
    for part in text.replace(" ", "").lower().split(","):
        ends = part.replace("–", "-").split("-")
        if len(ends) > 2 or any(e[:3] not in DAY_NAMES or len(e) < 3 for e in ends):
            return None
        first, last = DAY_NAMES.index(ends[0][:3]), DAY_NAMES.index(ends[-1][:3])
        day = first
        while True:
            out.add(day)
            if day == last:
                break
            day = (day + 1) % 7
    return frozenset(out) or None
