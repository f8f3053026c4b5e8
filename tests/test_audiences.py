"""Audiences: a list gets every communication or only milestones; out of working hours, mail
to a list waits for the morning by severity, in each recipient's time zone. Every test reads
the real messages back from the SMTP sink."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from mailflow import incidents as inc
from mailflow.app import Mailflow
from mailflow.config import load_config
from mailflow.contacts import parse_contacts
from mailflow.errors import ContactsError
from mailflow.scheduler import tick
from mailflow.testing import Sink

from .conftest import T0, write_config

CONTACTS = """\
people:
  - {name: Ana Lima, email: ana@example.org, timezone: Europe/Zurich}
  - {name: Raj Iyer, email: raj@example.org, timezone: Asia/Kolkata}
lists:
  stakeholders: [ana@example.org, ops-team@example.org]
  learn-users: [teachers@example.org, raj@example.org]
services:
  learn:
    title: ISC Learn Platform
    notify: {stakeholders: all, learn-users: milestones}
working_hours: {hours: 08:00-18:00, days: Mon-Fri, timezone: Europe/Zurich}
"""
EVERYONE = {"ana@example.org", "ops-team@example.org", "teachers@example.org", "raj@example.org"}
ALL_LIST = {"ana@example.org", "ops-team@example.org"}
# Tuesday 2026-11-24, 20:00 UTC: 21:00 in Zurich, 01:30 on Wednesday in Kolkata.
EVENING = datetime(2026, 11, 24, 20, 0, tzinfo=timezone.utc)


@pytest.fixture
def app(tmp_path: Path, sink: Sink) -> Iterator[Mailflow]:
    (tmp_path / "contacts.yaml").write_text(CONTACTS, encoding="utf-8")
    write_config(tmp_path, sink.port)
    application = Mailflow(load_config(tmp_path / "mailflow.toml"))
    yield application
    application.close()


def got(sink: Sink, kind: str) -> set[str]:
    """Who received an email of this kind (the envelope recipients the sink saw)."""
    return {r.rcpt_tos[0] for r in sink.received if r.message["X-Mailflow-Kind"] == kind}


def declare(app: Mailflow, at: datetime, severity: str = "P1", summary: str = "Down") -> inc.Incident:
    return inc.declare(app, at, service="learn", severity=severity, impact="outage",
                       summary=summary, lead="ana@example.org", author="ana@example.org")


def test_milestone_lists_get_start_severity_changes_and_solved_only(app: Mailflow,
                                                                    sink: Sink) -> None:
    incident = declare(app, T0)
    tick(app, T0)
    assert got(sink, "start") == EVERYONE

    sink.clear()
    inc.post_update(app, incident, "Restarting the database.", "ana@example.org",
                    T0 + timedelta(minutes=10))
    inc.send_update(app, incident, T0 + timedelta(minutes=10))
    tick(app, T0 + timedelta(minutes=10))
    assert got(sink, "update") == ALL_LIST, "a plain update is not a milestone"

    sink.clear()
    inc.apply_update(app, incident, T0 + timedelta(minutes=20), "ana@example.org",
                     fields={"impact": "degraded"})
    inc.send_update(app, incident, T0 + timedelta(minutes=20))
    tick(app, T0 + timedelta(minutes=20))
    assert got(sink, "update") == EVERYONE, "an impact change is a milestone"

    sink.clear()
    inc.resolve(app, incident, T0 + timedelta(minutes=40), "Restarted.", "ana@example.org")
    tick(app, T0 + timedelta(minutes=40))
    assert got(sink, "solved") == EVERYONE
    timeline = " ".join(e["text"] for e in inc.describe(incident)["timeline"])
    assert "not sent to 2 on milestone-only lists" in timeline


def test_low_severity_mail_to_milestone_lists_waits_for_each_recipients_morning(
        app: Mailflow, sink: Sink, tmp_path: Path) -> None:
    incident = declare(app, EVENING, severity="P3", summary="Slow reports")
    tick(app, EVENING)
    assert got(sink, "start") == ALL_LIST, "stakeholders (all) are told at once"

    # `mailflow show` as the operator runs it: its own process on the same database.
    result = subprocess.run(
        [sys.executable, "-m", "mailflow.cli", "--config", str(tmp_path / "mailflow.toml"),
         "show", incident.ref], env={**os.environ, "MAILFLOW_NOW": EVENING.isoformat()},
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "held until working hours:" in result.stdout
    assert "start email to 1 at 2026-11-25 02:30 UTC: raj@example.org" in result.stdout
    assert "start email to 1 at 2026-11-25 07:00 UTC: teachers@example.org" in result.stdout

    # 08:00 in Kolkata is 02:30 UTC; 08:00 in Zurich (the default zone) is 07:00 UTC.
    tick(app, datetime(2026, 11, 25, 2, 29, tzinfo=timezone.utc))
    assert got(sink, "start") == ALL_LIST
    tick(app, datetime(2026, 11, 25, 2, 30, tzinfo=timezone.utc))
    assert got(sink, "start") == ALL_LIST | {"raj@example.org"}
    tick(app, datetime(2026, 11, 25, 7, 0, tzinfo=timezone.utc))
    assert got(sink, "start") == EVERYONE


def test_high_severity_goes_at_once_and_is_not_held_up_by_waiting_mail(app: Mailflow,
                                                                       sink: Sink) -> None:
    declare(app, EVENING, severity="P3", summary="Slow reports")  # held for teachers and Raj
    declare(app, EVENING + timedelta(minutes=5), severity="P1", summary="Down")
    tick(app, EVENING + timedelta(minutes=5))
    starts = [r for r in sink.received if r.message["X-Mailflow-Kind"] == "start"]
    to_teachers = [r.message["Subject"] for r in starts if r.rcpt_tos == ["teachers@example.org"]]
    assert to_teachers == ["[INC-2] ISC Learn Platform: outage"], \
        "the P1 start reaches teachers at night, past the P3 email that waits for the morning"


def test_raised_severity_releases_what_was_waiting_first(app: Mailflow, sink: Sink) -> None:
    incident = declare(app, EVENING, severity="P3", summary="Slow reports")
    tick(app, EVENING)
    later = EVENING + timedelta(minutes=30)
    inc.apply_update(app, incident, later, "ana@example.org", fields={"severity": "P1"},
                     text="It is getting worse.")
    inc.send_update(app, incident, later)
    tick(app, later)
    to_teachers = [r.message["X-Mailflow-Kind"] for r in sink.received
                   if r.rcpt_tos == ["teachers@example.org"]]
    assert to_teachers == ["start", "update"], "the held start goes first, then the P1 update"


def test_hold_per_list_and_severity(tmp_path: Path, sink: Sink) -> None:
    (tmp_path / "contacts.yaml").write_text(CONTACTS.replace(
        "{stakeholders: all, learn-users: milestones}",
        "{stakeholders: {gets: all, hold: [P2, P3]}, learn-users: {gets: milestones, hold: []}}"),
        encoding="utf-8")
    write_config(tmp_path, sink.port)
    app = Mailflow(load_config(tmp_path / "mailflow.toml"))
    try:
        declare(app, EVENING, severity="P2")
        tick(app, EVENING)
        # Ana is the lead (named directly): never held. ops-team waits; learn-users never do.
        assert got(sink, "start") == {"ana@example.org", "teachers@example.org",
                                      "raj@example.org"}
    finally:
        app.close()


@pytest.mark.parametrize(("notify", "line", "says"), [
    ("{stakeholders: some}", 10, "say `all` (every communication) or `milestones`"),
    ("{stakeholders: all, nobody: milestones}", 10, "unknown list 'nobody'"),
    ("{stakeholders: {gets: all, hold: [P9]}}", 10, "'P9' is not a severity"),
    ("{stakeholders: {gets: all, wait: [P3]}}", 10, "unknown key 'wait'"),
    ("{}", 10, "names no lists"),
])
def test_bad_audiences_are_refused_with_line_and_fix(notify: str, line: int, says: str) -> None:
    text = CONTACTS.replace("{stakeholders: all, learn-users: milestones}", notify)
    with pytest.raises(ContactsError) as caught:
        parse_contacts(text, "contacts.yaml")
    assert f"contacts.yaml:{line}: " in str(caught.value)
    assert says in str(caught.value)


def test_bad_working_hours_are_refused_with_line_and_fix() -> None:
    text = CONTACTS.replace("hours: 08:00-18:00, days: Mon-Fri", "hours: 8-6, days: weekdays")
    with pytest.raises(ContactsError) as caught:
        parse_contacts(text, "contacts.yaml")
    assert "contacts.yaml:11: working_hours hours '8-6': write the start and end of the day, " \
           "e.g. 08:00-18:00" in str(caught.value)
    assert "working_hours days 'weekdays': write e.g. Mon-Fri" in str(caught.value)


def test_the_shipped_example_does_what_its_comments_say() -> None:
    root = Path(__file__).resolve().parent.parent
    contacts = parse_contacts((root / "contacts.yaml").read_text(encoding="utf-8"))
    learn = contacts.service("learn")
    assert learn.gets("stakeholders") == "all"
    assert learn.gets("learn-users") == "milestones"
    assert learn.held("learn-users") == {"P3"} and not learn.held("stakeholders")
    assert (root / "templates" / "contacts.yaml").read_text() == \
        (root / "contacts.yaml").read_text()


def test_contacts_list_says_what_each_list_gets(tmp_path: Path, sink: Sink) -> None:
    (tmp_path / "contacts.yaml").write_text(CONTACTS, encoding="utf-8")
    write_config(tmp_path, sink.port)
    result = subprocess.run(
        [sys.executable, "-m", "mailflow.cli", "--config", str(tmp_path / "mailflow.toml"),
         "contacts", "list"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "notify: stakeholders (all), learn-users (milestones, P3 held out of hours)" \
        in result.stdout
