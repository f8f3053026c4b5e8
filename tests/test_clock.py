"""The one place durations are read and written."""

from datetime import timedelta

import pytest

from mailflow.clock import compact_duration, format_duration, parse_duration
from mailflow.errors import InvalidInput


@pytest.mark.parametrize("text, minutes", [
    ("30m", 30), ("45 min", 45), ("1h30m", 90), ("1 hour 30 minutes", 90), ("2 hrs", 120),
    ("1d", 1440), ("2 days", 2880), ("1 week", 10080), ("90 Minutes", 90),
])
def test_parse_reads_short_and_spelled_out_units(text: str, minutes: int) -> None:
    assert parse_duration(text) == timedelta(minutes=minutes)


@pytest.mark.parametrize("text", ["", "0m", "5 mo", "soon", "1h and a bit", "-5m"])
def test_parse_refuses_what_is_not_a_duration(text: str) -> None:
    with pytest.raises(InvalidInput, match="is not a duration; write e.g. 30m"):
        parse_duration(text, what="next update")


def test_compact_round_trips_through_parse() -> None:
    for minutes in (1, 30, 90, 240, 1440, 1530, 10080):
        delta = timedelta(minutes=minutes)
        assert parse_duration(compact_duration(delta)) == delta
        assert parse_duration(compact_duration(delta, one_unit=True)) == delta
    assert compact_duration(timedelta(minutes=90)) == "1h30m"
    # escalation keys keep their historical spelling: one unit
    assert compact_duration(timedelta(minutes=90), one_unit=True) == "90m"
    assert compact_duration(timedelta(days=1), one_unit=True) == "1d"


def test_format_is_for_humans_and_never_negative() -> None:
    assert format_duration(timedelta(hours=26, minutes=5)) == "1 d 2 h 5 min"
    assert format_duration(timedelta(minutes=45)) == "45 min"
    assert format_duration(timedelta(minutes=-3)) == "0 min"  # a clock that stepped back
