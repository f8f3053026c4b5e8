"""Alerts open draft incidents: real webhooks posted to the running daemon's HTTP listener."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest

from mailflow import alerts
from mailflow.app import Mailflow
from mailflow.config import load_config
from mailflow.errors import ConfigError
from mailflow.models import Alert, Incident
from mailflow.scheduler import run_due
from mailflow.testing import CONTACTS, Sink

from .conftest import T0, write_config
from .helpers import Process, send_reply, text_of, wait_for

FIXTURES = Path(__file__).parent / "fixtures" / "alerts"
TOKEN = "alert-token-0123456789abcdef"
HTTP = f'[http]\nenabled = true\nport = 0\ntoken = "{TOKEN}"\n'
# learn's on-call: Bob first, then Ana.
ONCALL_CONTACTS = CONTACTS.replace("    expertise: [moodle, postgres]\n",
                                   "    expertise: [moodle, postgres]\n"
                                   "    oncall: [bob@example.org, ana@example.org]\n")


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def project(folder: Path, port: int, extra: str = HTTP) -> Path:
    (folder / "contacts.yaml").write_text(ONCALL_CONTACTS, encoding="utf-8")
    return write_config(folder, port, extra)


def http_port(daemon: Process) -> int:
    wait_for(lambda: daemon.logged("listening for alerts"), what="the HTTP listener")
    for line in daemon.lines:
        m = re.search(r"listening for alerts on http://127\.0\.0\.1:(\d+)", line)
        if m:
            return int(m.group(1))
    raise AssertionError("no HTTP port logged")


def post(port: int, path: str, body: bytes, token: str | None = TOKEN) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def incidents(folder: Path) -> list[Incident]:
    app = Mailflow(load_config(folder / "mailflow.toml"))
    try:
        return list(Incident.select().order_by(Incident.id))
    finally:
        app.close()


def test_webhooks_draft_dedup_declare_resolve(tmp_path: Path, sink: Sink) -> None:
    project(tmp_path, sink.port)
    daemon = Process(tmp_path, {"MAILFLOW_NOW": T0.isoformat()})
    try:
        port = http_port(daemon)
        # No token, a wrong one: refused before anything is read.
        assert post(port, "/alerts/alertmanager", fixture("alertmanager_firing.json"),
                    token=None)[0] == 401
        assert post(port, "/alerts/alertmanager", fixture("alertmanager_firing.json"),
                    token="wrong-token-0123456789")[0] == 401
        assert post(port, "/alerts/alertmanager", b"{not json")[0] == 400

        status, body = post(port, "/alerts/alertmanager", fixture("alertmanager_firing.json"))
        assert (status, body) == (200, {"status": "drafted", "incident": "INC-1"})
        # The on-call person (first of `oncall:`) is asked at once, nobody else.
        wait_for(lambda: len(sink.received) == 1, what="the on-call email")
        ask = sink.received[0]
        assert ask.rcpt_tos == ["bob@example.org"]
        text = text_of(ask.message)
        assert "Learn returns 5xx for 12% of requests" in text
        assert "web-1:9100" in text and "web-2:9100" in text
        assert "`declare`" in text and "`dismiss`" in text

        # The same group again (Alertmanager re-sends every repeat_interval): same draft.
        assert post(port, "/alerts/alertmanager", fixture("alertmanager_firing.json"))[1] == \
            {"status": "updated", "incident": "INC-1"}
        # A distinct group, and a Grafana alert: each its own draft.
        assert post(port, "/alerts/alertmanager", fixture("alertmanager_other.json"))[1] == \
            {"status": "drafted", "incident": "INC-2"}
        assert post(port, "/alerts/grafana", fixture("grafana_firing.json"))[1] == \
            {"status": "drafted", "incident": "INC-3"}
        wait_for(lambda: len(sink.received) == 3, what="one email per new draft")
        rows = incidents(tmp_path)
        assert [(i.status, i.severity) for i in rows] == \
            [("draft", "P1"), ("draft", "P2"), ("draft", "P2")]
        assert rows[2].summary == "Learn API p99 latency is 3.4 s"

        # Drafts are not in `list` unless asked, and show as drafts when they are.
        env = {**os.environ, "MAILFLOW_NOW": T0.isoformat()}
        cmd = [sys.executable, "-m", "mailflow.cli", "--config", str(tmp_path / "mailflow.toml"),
               "list"]
        assert "INC-1" not in subprocess.run(cmd, env=env, capture_output=True, text=True,
                                             check=True).stdout
        listed = subprocess.run(cmd + ["--drafts"], env=env, capture_output=True, text=True,
                                check=True).stdout
        assert re.search(r"INC-1\s+draft", listed)

        # Bob declares by reply, raising the severity: the start notification goes out.
        reply_to = ask.message["Reply-To"]
        assert send_reply(daemon.port or 0, reply_to,
                          "declare\nseverity: P0\nimpact: outage\n\nlooking", sender="bob@example.org") == 250
        wait_for(lambda: any(r.message["X-Mailflow-Kind"] == "start" for r in sink.received),
                 what="the start notification")
        starts = [r for r in sink.received if r.message["X-Mailflow-Kind"] == "start"]
        assert {t for r in starts for t in r.rcpt_tos} >= {"ana@example.org",
                                                         "ops-team@example.org",
                                                         "bob@example.org"}
        first = incidents(tmp_path)[0]
        assert (first.status, first.severity, first.impact, first.lead) == \
            ("open", "P0", "outage", "bob@example.org")

        # The alert resolves: a note to the lead, the incident stays open.
        before = len(sink.received)
        assert post(port, "/alerts/alertmanager", fixture("alertmanager_resolved.json"))[1] == \
            {"status": "resolved", "incident": "INC-1"}
        wait_for(lambda: len(sink.received) == before + 1, what="the note to the lead")
        note = sink.received[-1]
        assert note.rcpt_tos == ["bob@example.org"]
        assert "reply `resolved`" in text_of(note.message)
        assert incidents(tmp_path)[0].status == "open"

        # A reply `dismiss` closes the other draft without a word to anyone.
        ask2 = next(r for r in sink.received if "db-1" in r.message.get_body(("plain",))
                    .get_content())
        before = len(sink.received)
        assert send_reply(daemon.port or 0, ask2.message["Reply-To"], "dismiss",
                          sender="bob@example.org") == 250
        assert incidents(tmp_path)[1].status == "dismissed"
        assert len(sink.received) == before
    finally:
        daemon.close()


def test_unknown_service_is_refused_clearly(tmp_path: Path, sink: Sink) -> None:
    project(tmp_path, sink.port)
    daemon = Process(tmp_path, {"MAILFLOW_NOW": T0.isoformat()})
    try:
        port = http_port(daemon)
        payload = json.loads(fixture("alertmanager_firing.json"))
        for section in ("commonLabels", "groupLabels"):
            payload[section].pop("service", None)
        for a in payload["alerts"]:
            a["labels"].pop("service")
        status, body = post(port, "/alerts/alertmanager", json.dumps(payload).encode())
        assert status == 422
        assert "default_service" in body["error"]
        assert post(port, "/alerts/alertmanager", b'{"alerts": []}')[0] == 422
        assert daemon.proc.poll() is None
    finally:
        daemon.close()


def test_reminder_after_ten_minutes_then_the_next_person(tmp_path: Path, sink: Sink) -> None:
    project(tmp_path, sink.port)
    env = {"MAILFLOW_NOW": T0.isoformat()}
    daemon = Process(tmp_path, env)
    try:
        post(http_port(daemon), "/alerts/alertmanager", fixture("alertmanager_firing.json"))
        wait_for(lambda: len(sink.received) == 1, what="the on-call email")
    finally:
        daemon.close()
    # Nine minutes later nothing is due; at ten Bob is reminded; at twenty Ana is asked.
    app = Mailflow(load_config(tmp_path / "mailflow.toml"))
    try:
        assert run_due(app, T0 + timedelta(minutes=9)).done == []
        assert run_due(app, T0 + timedelta(minutes=10)).done == ["alert-page 1 of INC-1"]
    finally:
        app.close()
    daemon = Process(tmp_path, {"MAILFLOW_NOW": (T0 + timedelta(minutes=20)).isoformat()})
    try:
        wait_for(lambda: len(sink.received) == 3, what="the reminder and the next person")
        reminder, nxt = sink.received[1], sink.received[2]
        assert reminder.rcpt_tos == ["bob@example.org"]
        assert "Reminder" in reminder.message["X-Mailflow-Kind"] + \
            text_of(reminder.message)
        assert nxt.rcpt_tos == ["ana@example.org"]
    finally:
        daemon.close()


def test_declared_drafts_get_no_reminders_and_cli_alerts(tmp_path: Path, sink: Sink) -> None:
    project(tmp_path, sink.port, extra="")
    env = {**os.environ, "MAILFLOW_NOW": T0.isoformat()}
    cmd = [sys.executable, "-m", "mailflow.cli", "--config", str(tmp_path / "mailflow.toml"),
           "alert", "--service", "learn", "--key", "web-1/http", "--severity", "critical",
           "--summary", "HTTP CRITICAL on web-1"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    assert out.startswith("drafted INC-1")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    assert out.startswith("updated INC-1")
    assert len(sink.received) == 1
    app = Mailflow(load_config(tmp_path / "mailflow.toml"))
    try:
        draft = Incident.get_by_id(1)
        alerts.declare_draft(app, draft, T0 + timedelta(minutes=2), "ana@example.org")
        # Declared: the draft's paging stops; the normal marks take over.
        assert run_due(app, T0 + timedelta(minutes=30)).done == []
        assert Alert.select().count() == 1
    finally:
        app.close()
    bad = subprocess.run(cmd[:-6] + ["--service", "nope", "--summary", "x"], env=env,
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "nope" in bad.stderr


def test_http_needs_a_token(tmp_path: Path) -> None:
    write_config(tmp_path, None, '[http]\nenabled = true\ntoken = "short"\n')
    with pytest.raises(ConfigError, match="http.token"):
        load_config(tmp_path / "mailflow.toml")


def test_parse_decision() -> None:
    assert alerts.parse_decision("Declare\nseverity: P1\nsummary: Logins fail\n\nthanks") == \
        ("declare", {"severity": "P1", "summary": "Logins fail"})
    assert alerts.parse_decision("\n dismiss \n") == ("dismiss", {})
    assert alerts.parse_decision("I will look at it, declare later") == ("", {})
