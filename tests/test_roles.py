"""Roles, handover, severity changes and the two grades of resolution."""

from __future__ import annotations

from datetime import timedelta

from mailflow import incidents as inc
from mailflow.app import Mailflow
from mailflow.models import Due, Entry, Incident, OutMessage
from mailflow.scheduler import tick
from mailflow.testing import Sink

from .conftest import T0
from .helpers import GREEN, ORANGE, by_rcpt, declare, highlighted, html_of, text_of

YELLOW = "#fff8c5"


def at(minutes: int = 0, hours: float = 0):  # noqa: ANN201
    return T0 + timedelta(minutes=minutes, hours=hours)


def test_handover_is_logged_and_announced_in_the_next_email(app: Mailflow, sink: Sink) -> None:
    incident = declare(app, impacted=[])
    inc.assign(app, incident, at(30), "ana@example.org", lead="bob@example.org",
               scribe="chloe@example.org", communicator="dan@example.org")
    inc.send_update(app, Incident.get_by_id(incident.id), at(31))
    app.deliver_now(at(31))
    update = [m for m in by_rcpt(sink)["ops-team@example.org"] if m["X-Mailflow-Kind"] == "update"][0]
    new = " | ".join(highlighted(html_of(update), ORANGE))
    assert "Lead: ana@example.org → bob@example.org" in new
    assert "Incident lead" in new and "Scribe" in new
    # Reminders go to the new lead and the communicator.
    sink.clear()
    tick(app, at(hours=1, minutes=21))  # 10 min before the 11:31 mark
    reminded = sorted(r.rcpt_tos[0] for r in sink.received
                      if r.message["X-Mailflow-Kind"] == "reminder")
    assert reminded == ["bob@example.org", "dan@example.org"]


def test_the_scribe_receives_every_reply_as_it_is_posted(app: Mailflow, sink: Sink) -> None:
    incident = declare(app, impacted=[])
    inc.assign(app, incident, at(1), "ana@example.org", scribe="chloe@example.org")
    app.deliver_now(at(1))
    sink.clear()
    inc.post_update(app, Incident.get_by_id(incident.id), "Disk full on db1", "bob@example.org",
                    at(5))
    app.deliver_now(at(5))
    [notice] = sink.received
    assert notice.rcpt_tos == ["chloe@example.org"]
    assert "Disk full on db1" in text_of(notice.message)


def test_impacted_people_join_from_the_next_email(app: Mailflow, sink: Sink) -> None:
    incident = declare(app, impacted=[])
    app.deliver_now(T0)
    assert "dean@example.org" not in by_rcpt(sink)
    inc.add_impacted(app, incident, "dean@example.org", at(5), "ana@example.org")
    inc.send_update(app, Incident.get_by_id(incident.id), at(6))
    app.deliver_now(at(6))
    [update] = by_rcpt(sink)["dean@example.org"]
    assert update["In-Reply-To"] is None, "their first email starts their thread"
    # Recorded in the timeline, not broadcast as news; the facts say who is impacted.
    assert "Added dean@example.org" not in html_of(update)
    assert any("dean@example.org" in h for h in highlighted(html_of(update), ORANGE)
               if "Who is impacted" in h)
    assert Entry.get(Entry.kind == "recipient").text == \
        "Added dean@example.org to the emails (impacted)"


def test_severity_change_moves_marks_and_escalation_thresholds(app: Mailflow,
                                                              project) -> None:  # noqa: ANN001
    from mailflow.config import load_config

    (project / "mailflow.toml").write_text((project / "mailflow.toml").read_text().replace(
        'secret = "test-secret-0123456789"',
        'secret = "test-secret-0123456789"\n[cadence]\nescalate = {P0 = ["1h", "4h"], P2 = ["1d"]}'))
    app = Mailflow(load_config(project / "mailflow.toml"))
    incident = declare(app, impacted=[], severity="P2")
    pending = lambda: sorted(d.key for d in Due.select().where(  # noqa: E731
        (Due.kind == "escalate") & Due.done_at.is_null()))
    assert pending() == ["1d"]
    assert incident.next_comm_at == at(hours=4)
    inc.change(app, incident, at(90), "ana@example.org", severity="P0")
    fresh = Incident.get_by_id(incident.id)
    assert pending() == ["1h", "4h"]
    assert fresh.next_comm_at == at(120), "P0 cadence (30 min) from the change"
    tick(app, at(91))
    escalations = OutMessage.select().where(OutMessage.kind == "escalation")
    assert sorted(m.recipient for m in escalations) == ["ana@example.org"], \
        "the 1 h threshold, already past, fires at once (no contacts list for 1 h)"
    tick(app, at(hours=4))
    assert sorted(m.recipient for m in OutMessage.select().where(
        OutMessage.kind == "escalation")) == ["ana@example.org", "ana@example.org",
                                              "dan@example.org"]
    app.close()


def test_resolved_with_follow_up_is_yellow_then_close_is_green(app: Mailflow, sink: Sink) -> None:
    incident = declare(app, impacted=[])
    inc.resolve(app, incident, at(50), "Failed over to the replica", "ana@example.org",
                follow_up="Rebuild the old primary")
    app.deliver_now(at(50))
    first = by_rcpt(sink)["ops-team@example.org"][-1]
    html = html_of(first)
    assert "Resolved, follow-up pending" in html
    assert ["Rebuild the old primary" in h for h in highlighted(html, YELLOW)] == [True]
    assert ["Failed over to the replica" in h for h in highlighted(html, GREEN)] == [True]
    assert Incident.get_by_id(incident.id).status == "follow-up"
    inc.close(app, Incident.get_by_id(incident.id), at(hours=30), "ana@example.org",
              "Old primary rebuilt and back in the pool")
    app.deliver_now(at(hours=30))
    final = by_rcpt(sink)["ops-team@example.org"][-1]
    html = html_of(final)
    assert "Solved" in html and highlighted(html, YELLOW) == []
    assert "Old primary rebuilt" in " ".join(highlighted(html, GREEN))
    assert "Duration: 50 min" in text_of(final), "the outage lasted until the resolution"
    assert Incident.get_by_id(incident.id).status == "resolved"
