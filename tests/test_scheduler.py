"""The clock: reminders, marks, escalations and handover, each exactly once, by passing `now`."""

from __future__ import annotations

from datetime import timedelta

import pytest

from mailflow import incidents as inc
from mailflow.app import Mailflow
from mailflow.config import load_config
from mailflow.models import Due, Entry, Incident
from mailflow.scheduler import tick
from mailflow.testing import Sink

from .conftest import BACKENDS, T0
from .helpers import ORANGE, by_rcpt, declare, highlighted, html_of, text_of


def at(hours: float = 0, minutes: int = 0, days: int = 0):  # noqa: ANN201
    return T0 + timedelta(hours=hours, minutes=minutes, days=days)


def kinds(sink: Sink) -> list[tuple[str, str]]:
    return sorted((r.rcpt_tos[0], r.message["X-Mailflow-Kind"]) for r in sink.received)


def test_a_day_of_ticks(app: Mailflow, sink: Sink, project) -> None:  # noqa: ANN001
    incident = declare(app, impacted=[])
    app.deliver_now(T0)
    sink.clear()

    tick(app, at(minutes=49))
    assert sink.received == []

    tick(app, at(minutes=50))
    assert kinds(sink) == [("ana@example.org", "reminder")], "only the lead is reminded"
    reminder = sink.received[0].message
    assert "goes out at 11:00 UTC" in text_of(reminder)
    assert "(12:00 Europe/Zurich)" in text_of(reminder)
    sink.clear()
    tick(app, at(minutes=50))
    tick(app, at(minutes=55))
    assert sink.received == [], "the reminder goes once"

    inc.post_update(app, Incident.get_by_id(incident.id), "Replica is 2 h behind",
                    "ana@example.org", at(minutes=56))
    tick(app, at(hours=1))
    assert kinds(sink) == [("ana@example.org", "update"), ("ops-team@example.org", "update")]
    update = by_rcpt(sink)["ops-team@example.org"][0]
    assert ["Replica is 2 h behind" in h for h in highlighted(html_of(update), ORANGE)] == [True]
    assert "Next communication at 12:00 UTC" in text_of(update)
    assert Incident.get_by_id(incident.id).next_comm_at == at(hours=2)
    sink.clear()

    # Nobody ticks between 11:00 and 14:00: one catch-up update, no late reminder.
    tick(app, at(hours=4))
    by_kind = kinds(sink)
    assert ("ana@example.org", "reminder") not in by_kind
    assert by_kind.count(("ops-team@example.org", "update")) == 1
    escalations = [r for r in sink.received if r.message["X-Mailflow-Kind"] == "escalation"]
    assert sorted(r.rcpt_tos[0] for r in escalations) == ["ana@example.org", "dan@example.org"]
    text = text_of(next(r.message for r in escalations if r.rcpt_tos[0] == "dan@example.org"))
    assert "unresolved after 4 h" in text
    assert "restore from backups, or reinstall the server" in text
    experts = text.split("Who can help:")[1].split("Latest state:")[0]
    assert experts.index("Chloe Martin") < experts.index("Ana Lima")
    assert "Bob Stone <bob@example.org>: moodle" in experts
    assert "Dan Boss" not in experts
    sink.clear()

    tick(app, at(hours=4))
    assert sink.received == [], "the 4 h escalation fires exactly once"

    # A restart (new process, same database) changes nothing.
    app.close()
    again = Mailflow(load_config(project / "mailflow.toml"))
    tick(again, at(hours=4))
    assert sink.received == []

    tick(again, at(days=1))
    one_day = [r for r in sink.received if r.message["X-Mailflow-Kind"] == "escalation"]
    assert sorted(r.rcpt_tos[0] for r in one_day) == ["ana@example.org", "eve@example.org"]
    assert "complete workaround" in text_of(one_day[0].message)
    assert Entry.select().where(Entry.kind == "escalation").count() == 2
    again.close()


def test_handover_reminder_at_seven_hours_restarts_for_a_new_lead(app: Mailflow,
                                                                 sink: Sink) -> None:
    incident = declare(app, impacted=[])
    tick(app, at(hours=6, minutes=59))
    assert not [r for r in sink.received if r.message["X-Mailflow-Kind"] == "handover"]
    tick(app, at(hours=7))
    handovers = [r for r in sink.received if r.message["X-Mailflow-Kind"] == "handover"]
    assert [r.rcpt_tos[0] for r in handovers] == ["ana@example.org"]
    assert "time to hand over" in text_of(handovers[0].message)

    inc.assign(app, Incident.get_by_id(incident.id), at(hours=7, minutes=30), "ana@example.org",
               lead="bob@example.org")
    sink.clear()
    tick(app, at(hours=14, minutes=29))
    assert not [r for r in sink.received if r.message["X-Mailflow-Kind"] == "handover"]
    tick(app, at(hours=14, minutes=30))
    handovers = [r for r in sink.received if r.message["X-Mailflow-Kind"] == "handover"]
    assert [r.rcpt_tos[0] for r in handovers] == ["bob@example.org"]


def test_resolving_cancels_everything_pending(app: Mailflow, sink: Sink) -> None:
    incident = declare(app, impacted=[])
    inc.resolve(app, incident, at(minutes=30), "Restarted the pool", "ana@example.org")
    app.deliver_now(at(minutes=30))
    sink.clear()
    tick(app, at(days=2))
    assert sink.received == []
    assert [d.kind for d in Due.select().where(Due.done_at.is_null())] == ["postmortem"]


def test_next_update_and_severity_move_the_mark(app: Mailflow, sink: Sink) -> None:
    incident = declare(app, impacted=[], severity="P2")  # P2: every 4 h
    assert incident.next_comm_at == at(hours=4)
    inc.change(app, incident, at(minutes=10), "ana@example.org", severity="P0")  # every 30 min
    assert Incident.get_by_id(incident.id).next_comm_at == at(minutes=40)
    inc.set_next_update(app, Incident.get_by_id(incident.id), "15m", at(minutes=20), "ana")
    assert Incident.get_by_id(incident.id).next_comm_at == at(minutes=35)
    tick(app, at(minutes=35))
    updates = [r for r in sink.received if r.message["X-Mailflow-Kind"] == "update"]
    assert updates, "the update went out at the moved mark"
    assert "P0 (critical" in " ".join(highlighted(html_of(updates[0].message), ORANGE))


def test_postmortem_draft_goes_to_the_lead_and_is_reminded_after_two_working_days(
        app: Mailflow, sink: Sink) -> None:
    from datetime import datetime, timezone

    friday = datetime(2026, 11, 27, 16, 0, tzinfo=timezone.utc)
    incident = inc.declare(app, friday - timedelta(hours=1), service="learn", severity="P2",
                           impact="degraded", summary="Slow logins", lead="bob@example.org")
    inc.resolve(app, incident, friday, "Tuned the pool", "bob@example.org")
    app.deliver_now(friday)
    [draft] = [r for r in sink.received if r.message["X-Mailflow-Kind"] == "notice"]
    assert draft.rcpt_tos == ["bob@example.org"]
    body = text_of(draft.message)
    assert "# Postmortem: [INC-1]" in body and "## Root cause identification" in body
    sink.clear()
    tick(app, datetime(2026, 12, 1, 15, 59, tzinfo=timezone.utc))  # Mon, Tue: not yet
    assert sink.received == []
    tick(app, datetime(2026, 12, 1, 16, 0, tzinfo=timezone.utc))
    [reminder] = sink.received
    assert reminder.rcpt_tos == ["bob@example.org"]
    assert "not been marked done" in text_of(reminder.message)


def test_no_postmortem_reminder_once_done(app: Mailflow, sink: Sink) -> None:
    incident = declare(app, impacted=[])
    inc.resolve(app, incident, at(hours=1), "Fixed", "ana@example.org")
    fresh = Incident.get_by_id(incident.id)
    fresh.postmortem_done = True
    fresh.save()
    app.deliver_now(at(hours=1))
    sink.clear()
    tick(app, at(days=7))
    assert sink.received == []


def test_moving_the_mark_back_to_the_announced_time_keeps_it(app: Mailflow, sink: Sink) -> None:
    incident = declare(app, impacted=[])
    inc.set_next_update(app, Incident.get_by_id(incident.id), "30m", at(minutes=5), "ana")
    inc.set_next_update(app, Incident.get_by_id(incident.id), "11:00", at(minutes=20), "ana")
    app.deliver_now(at(minutes=20))
    sink.clear()
    tick(app, at(minutes=50))
    tick(app, at(hours=1))
    assert sorted(r.message["X-Mailflow-Kind"] for r in sink.received
                  if r.rcpt_tos[0] == "ana@example.org") == ["reminder", "update"]


def test_severity_back_and_forth_keeps_the_escalations(project, sink: Sink) -> None:  # noqa: ANN001
    config = project / "mailflow.toml"
    config.write_text(config.read_text() + '[cadence]\nescalate = {P0 = ["1h", "4h"]}\n')
    app = Mailflow(load_config(config))
    incident = declare(app, impacted=[])
    inc.change(app, incident, at(minutes=10), "ana", severity="P0")
    pending = lambda: sorted(d.key for d in Due.select().where(  # noqa: E731
        (Due.kind == "escalate") & Due.done_at.is_null()))
    assert pending() == ["1h", "4h"]
    inc.change(app, Incident.get_by_id(incident.id), at(minutes=20), "ana", severity="P1")
    assert pending() == ["1d", "4h"], "the cancelled 1 d escalation is planned again"
    app.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Every test here that uses a project runs on SQLite and on PostgreSQL."""
    return str(request.param)
