"""Details of what people see: hidden characters dropped from posted text, a local time
in a DST overlap carries its offset. Read back from the real SMTP sink."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from mailflow import incidents as inc
from mailflow.app import Mailflow
from mailflow.render import Personal
from mailflow.testing import Sink

from .conftest import T0
from .helpers import by_rcpt, declare, html_of, text_of


def test_bidi_overrides_and_zero_width_characters_never_reach_an_email(
        app: Mailflow, sink: Sink) -> None:
    incident = declare(app)
    # "invoice\u202Efdp.exe" reads as "invoiceexe.pdf"; a zero-width space hides a word
    inc.post_update(app, incident, "Open invoice\u202efdp.exe — ign\u200bore", "ana@example.org",
                    T0 + timedelta(minutes=5))
    inc.send_update(app, incident, T0 + timedelta(minutes=6))
    app.deliver_now(T0 + timedelta(minutes=6))
    [update] = [m for m in by_rcpt(sink)["ops-team@example.org"]
                if m["X-Mailflow-Kind"] == "update"]
    for body in (text_of(update), html_of(update)):
        assert "invoicefdp.exe" in body and "ignore" in body
        assert "\u202e" not in body and "\u200b" not in body


def test_a_time_in_the_repeated_dst_hour_shows_its_offset() -> None:
    ana = Personal("ana@example.org", "Ana Lima", timezone="Europe/Zurich")
    # 2026-10-25: 02:30 happens twice in Zurich (CEST then CET)
    first = datetime(2026, 10, 25, 0, 30, tzinfo=timezone.utc)
    second = datetime(2026, 10, 25, 1, 30, tzinfo=timezone.utc)
    assert ana.local(first) == " (02:30 UTC+02:00 Europe/Zurich)"
    assert ana.local(second) == " (02:30 UTC+01:00 Europe/Zurich)"
    assert ana.local(datetime(2026, 11, 24, 10, 0, tzinfo=timezone.utc)) == " (11:00 Europe/Zurich)"
