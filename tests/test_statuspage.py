"""The status page: files parsed back (HTML, Atom with feedparser, Statuspage JSON)."""

from __future__ import annotations

import json
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path

import feedparser
from click.testing import CliRunner

from mailflow import incidents as inc
from mailflow import statuspage
from mailflow.app import Mailflow
from mailflow.cli import cli
from mailflow.config import load_config
from mailflow.testing import Sink

from .conftest import T0, write_config
from .helpers import Process, send_reply, text_of, wait_for


class Text(HTMLParser):
    """The visible text of a page, and whether it has any script."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:  # noqa: ANN001
        self.scripts += tag == "script"

    def handle_data(self, data: str) -> None:
        self.parts.append(data)

    @property
    def text(self) -> str:
        return " ".join(" ".join(self.parts).split())


def page(path: Path) -> Text:
    parser = Text()
    parser.feed(path.read_text(encoding="utf-8"))
    assert parser.scripts == 0
    return parser


def setup(tmp_path: Path, sink: Sink, after: str = "") -> Path:
    extra = f'[status]\ndir = "site"\ntitle = "Example status"\n{after}'
    write_config(tmp_path, sink.port, extra)
    return tmp_path / "site"


def run(folder: Path, *args: str, now=T0) -> object:  # noqa: ANN001
    env = {"MAILFLOW_CONFIG": str(folder / "mailflow.toml"), "MAILFLOW_NOW": now.isoformat(),
           "MAILFLOW_USER": "ana@example.org"}
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def test_internal_every_communication_external_only_published(tmp_path: Path,
                                                              sink: Sink) -> None:
    site = setup(tmp_path, sink)
    r = run(tmp_path, "declare", "--service", "learn", "--severity", "P1", "--impact", "outage",
            "--summary", "Learn returns 502 (ana@example.org restarting db-1)",
            "--lead", "ana@example.org")
    assert r.exit_code == 0, r.output
    internal, external = site / "internal", site / "external"
    text = page(internal / "index.html").text
    assert "ISC Learn Platform Major outage" in text
    assert "Learn returns 502" in text
    # Nothing published yet: the public page says all is well and names no incident.
    assert "No open incidents" in page(external / "index.html").text
    assert not (external / "incidents" / "INC-1.html").exists()
    summary = json.loads((external / "api/v2/summary.json").read_text())
    assert summary["status"]["indicator"] == "none"
    assert summary["components"][0]["status"] == "operational"
    # The lead is asked whether to publish.
    ask = [m for m in sink.messages() if "Publish the start" in m["Subject"] or
           "Publish the start" in m.get_body(("plain",)).get_content()]
    assert ask and ask[0]["To"].endswith("ana@example.org>")

    refused = CliRunner().invoke(
        cli, ["publish", "INC-1", "--text", "Chloe Martin (chloe@example.org) is restoring it"],
        env={"MAILFLOW_CONFIG": str(tmp_path / "mailflow.toml"), "MAILFLOW_NOW": T0.isoformat()})
    assert refused.exit_code == 1
    assert "names chloe@example.org, Chloe Martin" in refused.output
    assert not (external / "incidents" / "INC-1.html").exists()
    r = run(tmp_path, "publish", "INC-1", "--text", "Learn is down; we are restoring it",
            now=T0 + timedelta(minutes=5))
    assert r.exit_code == 0, r.output
    ext = page(external / "incidents" / "INC-1.html").text
    assert "Learn is down; we are restoring it" in ext
    # Only public fields: no address, no internal summary, no severity.
    assert "ana@example.org" not in ext and "db-1" not in ext and "P1" not in ext
    for name in ("index.html", "feed.atom", "api/v2/summary.json", "api/v2/incidents.json"):
        assert "ana@example.org" not in (external / name).read_text()

    summary = json.loads((external / "api/v2/summary.json").read_text())
    assert summary["status"]["indicator"] == "major"
    assert summary["components"] == [{
        "id": "learn", "name": "ISC Learn Platform", "status": "major_outage", "position": 1,
        "description": None, "group_id": None, "group": False, "only_show_if_degraded": False,
        "showcase": True}]
    incidents = json.loads((external / "api/v2/incidents.json").read_text())["incidents"]
    assert [i["id"] for i in incidents] == ["INC-1"]
    first = incidents[0]
    assert set(first) >= {"id", "name", "status", "impact", "created_at", "updated_at",
                          "resolved_at", "shortlink", "incident_updates", "components"}
    assert first["status"] == "investigating" and first["impact"] == "major"
    assert [u["body"] for u in first["incident_updates"]] == ["Learn is down; we are restoring it"]
    # Outside, an update is dated when it was published (the start went out at 10:00).
    assert first["incident_updates"][0]["display_at"] == "2026-11-24T10:05:00Z"
    assert first["incident_updates"][0]["created_at"] == "2026-11-24T10:00:00Z"
    assert set(first["incident_updates"][0]) >= {"id", "status", "body", "created_at",
                                                 "display_at", "affected_components"}

    feed = feedparser.parse((external / "feed.atom").read_bytes())
    assert not feed.bozo, feed.bozo_exception
    assert feed.feed.title == "Example status"
    assert [e.summary for e in feed.entries] == ["Learn is down; we are restoring it"]

    # An update goes out: internal at once, external only once published (here as is).
    app = Mailflow(load_config(tmp_path / "mailflow.toml"))
    try:
        incident = inc.get_incident("INC-1")
        inc.post_update(app, incident, "Replica promoted, app servers restarting",
                        "ana@example.org", T0 + timedelta(minutes=20))
        inc.send_update(app, incident, T0 + timedelta(minutes=20))
        app.deliver_now(T0 + timedelta(minutes=20))
    finally:
        app.close()
    assert "Replica promoted" in page(internal / "incidents" / "INC-1.html").text
    assert "Replica promoted" not in page(external / "incidents" / "INC-1.html").text
    r = run(tmp_path, "publish", "INC-1", now=T0 + timedelta(minutes=22))
    assert r.exit_code == 0, r.output
    assert "Replica promoted" in page(external / "incidents" / "INC-1.html").text
    assert run(tmp_path, "publish", "INC-1").exit_code == 1  # nothing pending any more

    r = run(tmp_path, "resolve", "INC-1", "--steps", "Failed over to db-2",
            now=T0 + timedelta(hours=1))
    assert r.exit_code == 0, r.output
    summary = json.loads((internal / "api/v2/summary.json").read_text())
    assert summary["incidents"] == [] and summary["status"]["indicator"] == "none"
    assert "The last 90 days" in page(internal / "index.html").text
    past = page(internal / "index.html").text.split("The last 90 days")[1]
    assert "INC-1" in past
    feed = feedparser.parse((internal / "feed.atom").read_bytes())
    assert len(feed.entries) == 3


def test_publish_by_reply_through_the_daemon(tmp_path: Path, sink: Sink) -> None:
    site = setup(tmp_path, sink)
    assert run(tmp_path, "declare", "--service", "learn", "--severity", "P2", "--impact",
               "degraded", "--summary", "Slow logins", "--lead", "ana@example.org").exit_code == 0
    reply_to = sink.messages()[0]["Reply-To"]
    ext = site / "external" / "incidents" / "INC-1.html"
    daemon = Process(tmp_path, {"MAILFLOW_NOW": (T0 + timedelta(minutes=3)).isoformat()})
    try:
        port = daemon.port or 0
        # A stranger cannot publish (and does not post either).
        assert send_reply(port, reply_to, "publish", sender="zoe@example.org") == 550
        # A list on the emails may add text, not publish: the line is posted as text.
        assert send_reply(port, reply_to, "publish", sender="ops-team@example.org") == 250
        # Names and addresses never reach the public page: refused, and the lead is told.
        assert send_reply(port, reply_to, "publish: Ana Lima is restarting db-1",
                          sender="ana@example.org") == 250
        wait_for(lambda: any("names Ana Lima" in text_of(m) for m in sink.messages()
                             if "ana@example.org" in m["To"]), what="the refusal receipt")
        assert not ext.exists()
        assert send_reply(port, reply_to,
                          "publish: Logins are slow; we are on it", sender="ana@example.org") == 250
        wait_for(ext.exists, what="the external page")
        assert "Logins are slow; we are on it" in page(ext).text
        summary = json.loads((site / "external/api/v2/summary.json").read_text())
        assert summary["components"][0]["status"] == "degraded_performance"
        assert summary["incidents"][0]["incident_updates"][0]["body"] == \
            "Logins are slow; we are on it"

        # Resolved: the outside still sees it open until the solved update is published.
        assert send_reply(port, reply_to, "resolved\n\nCache flushed",
                          sender="ana@example.org") == 250
        internal = site / "internal" / "api/v2/summary.json"
        wait_for(lambda: json.loads(internal.read_text())["incidents"] == [],
                 what="the internal page to show it resolved")
        summary = json.loads((site / "external/api/v2/summary.json").read_text())
        assert [i["status"] for i in summary["incidents"]] == ["investigating"]
        assert send_reply(port, reply_to, "publish: Logins are fast again",
                          sender="ana@example.org") == 250
        wait_for(lambda: json.loads((site / "external/api/v2/summary.json").read_text())
                 ["incidents"] == [], what="the external page to show it resolved")
        assert "Logins are fast again" in page(site / "external" / "index.html").text \
            or "Logins are fast again" in page(ext).text
        assert page(ext).text.count("resolved") >= 1
    finally:
        daemon.close()
    timeline = run(tmp_path, "show", "INC-1").output
    assert "published" in timeline and "ops-team@example.org" in timeline


def test_publish_is_a_reply_command() -> None:
    from mailflow import commands

    assert commands.parse("publish\n\nthanks").commands == (commands.Command("publish", ""),)
    assert commands.parse("Publish: Logins are slow").commands == (
        commands.Command("publish", "Logins are slow"),)
    assert commands.parse("publsh").lookalikes[0].suggestion == "publish"


def test_a_failing_after_write_is_retried_and_never_blocks_mail(tmp_path: Path,
                                                                sink: Sink) -> None:
    setup(tmp_path, sink, after='after_write = "echo run >> ../uploads.log; exit 3"\n')
    app = Mailflow(load_config(tmp_path / "mailflow.toml"))
    try:
        inc.declare(app, T0, service="learn", severity="P1", impact="outage",
                    summary="Down", lead="ana@example.org")
        report = app.deliver_now(T0)
        assert report.sent >= 2  # the mail went out whatever the upload does
        statuspage.wait(app)
        log = tmp_path / "uploads.log"
        assert log.read_text().count("run") == 1
        runner = statuspage._after[id(app)]
        assert "exit 3" in runner.last_error
        # Not before a minute; then retried although nothing changed.
        assert statuspage.flush(app, T0 + timedelta(seconds=30)) is False
        assert statuspage.flush(app, T0 + timedelta(minutes=1)) is True
        statuspage.wait(app)
        assert log.read_text().count("run") == 2
    finally:
        app.close()


def test_drafts_are_never_on_the_page(tmp_path: Path, sink: Sink) -> None:
    from mailflow import alerts

    site = setup(tmp_path, sink)
    app = Mailflow(load_config(tmp_path / "mailflow.toml"))
    try:
        alerts.receive(app, alerts.from_cli("learn", "CPU high", key="k"), T0)
        statuspage.mark_dirty(app)
        app.deliver_now(T0)
        assert "CPU high" not in (site / "internal" / "index.html").read_text()
    finally:
        app.close()
