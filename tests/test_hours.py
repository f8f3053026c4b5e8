"""Working hours: when held mail may go, in the recipient's own time zone."""

from __future__ import annotations

from datetime import datetime, time, timezone

import pytest

from mailflow.hours import WorkingHours, parse_days, parse_hours

UTC = timezone.utc
HOURS = WorkingHours(timezone="Europe/Zurich")


@pytest.mark.parametrize(("at", "zone", "opens"), [
    (datetime(2026, 11, 24, 10, 0, tzinfo=UTC), None, None),  # Tuesday 11:00 Zurich
    (datetime(2026, 11, 24, 20, 0, tzinfo=UTC), None, datetime(2026, 11, 25, 7, 0, tzinfo=UTC)),
    (datetime(2026, 11, 24, 5, 0, tzinfo=UTC), None, datetime(2026, 11, 24, 7, 0, tzinfo=UTC)),
    # Friday evening waits for Monday; Saturday too.
    (datetime(2026, 11, 27, 18, 0, tzinfo=UTC), None, datetime(2026, 11, 30, 7, 0, tzinfo=UTC)),
    (datetime(2026, 11, 28, 12, 0, tzinfo=UTC), None, datetime(2026, 11, 30, 7, 0, tzinfo=UTC)),
    # Each recipient's own morning: 08:00 in Kolkata is 02:30 UTC.
    (datetime(2026, 11, 24, 20, 0, tzinfo=UTC), "Asia/Kolkata",
     datetime(2026, 11, 25, 2, 30, tzinfo=UTC)),
    # Summer time: 08:00 in Zurich is 06:00 UTC.
    (datetime(2026, 7, 1, 3, 0, tzinfo=UTC), None, datetime(2026, 7, 1, 6, 0, tzinfo=UTC)),
])
def test_opens_at(at: datetime, zone: str | None, opens: datetime | None) -> None:
    assert HOURS.opens_at(at, zone) == opens


def test_parsing() -> None:
    assert parse_hours("08:00-18:00") == (time(8), time(18))
    assert parse_hours("9:30 – 17:00") == (time(9, 30), time(17))
    assert parse_hours("18:00-08:00") is None and parse_hours("8-6") is None
    assert parse_days("Mon-Fri") == frozenset(range(5))
    assert parse_days("Sun-Thu") == frozenset({6, 0, 1, 2, 3})
    assert parse_days("mon,wed,friday") == frozenset({0, 2, 4})
    assert parse_days("weekdays") is None
