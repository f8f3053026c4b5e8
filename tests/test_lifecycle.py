"""Declare → start → update → solved, through a real SMTP server on loopback."""

from __future__ import annotations

from datetime import timedelta

import pytest

from mailflow import incidents as inc
from mailflow import render, tokens
from mailflow.app import Mailflow
from mailflow.errors import InvalidInput, NotFound
from mailflow.models import Entry, Incident, OutMessage, Recipient
from mailflow.testing import Sink

from .conftest import BACKENDS, T0
from .helpers import GREEN, ORANGE, by_rcpt, declare, highlighted, html_of, text_of


def test_start_goes_to_notify_lists_impacted_and_lead(app: Mailflow, sink: Sink) -> None:
    incident = declare(app)
    report = app.deliver_now(T0)
    assert report.sent == 3 and not report.errors
    mails = by_rcpt(sink)
    assert set(mails) == {"ana@example.org", "ops-team@example.org",
                          "student-council@example.org"}
    assert len(mails["ana@example.org"]) == 1, "the lead on the stakeholders list gets one copy"
    assert len(sink.received) == 3
    msg = mails["ops-team@example.org"][0]
    assert msg["Subject"] == "[INC-1] ISC Learn Platform: outage"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg.get_content_type() == "multipart/alternative"
    local, token, domain = tokens.split_address(msg["Reply-To"])
    assert (local, domain) == ("incidents", "example.org")
    assert tokens.verify(token or "", ["test-secret-0123456789"]) == incident.id
    text = text_of(msg)
    for expected in ("ISC Learn Platform", "Complete downtime", "P1", "student-council@example.org",
                     "unknown: depends on the database restore", "Restarting the DB primary",
                     "Check replication lag", "Next communication at 11:00 UTC"):
        assert expected in text
    html = html_of(msg)
    assert "<style" not in html, "premailer inlined the CSS"
    assert 'style="' in html
    assert "Next communication at 11:00 UTC" in html
    assert highlighted(html, ORANGE) == [], "nothing is 'new' in the first communication"


def test_each_copy_is_personal(app: Mailflow, sink: Sink) -> None:
    declare(app, lead="bob@example.org")
    app.deliver_now(T0)
    mails = by_rcpt(sink)
    ana, bob, ops = (mails[a][0] for a in ("ana@example.org", "bob@example.org",
                                          "ops-team@example.org"))
    assert ana["To"] == "Ana Lima <ana@example.org>"
    assert "Hello Ana," in text_of(ana) and "Hello Ana," in html_of(ana)
    assert "(12:00 Europe/Zurich)" in text_of(ana) and "(12:00 Europe/Zurich)" in html_of(ana)
    assert "stakeholders list" in text_of(ana)
    assert "(06:00 America/New_York)" in html_of(bob)
    assert "as the incident lead" in html_of(bob)
    assert "Hello," in text_of(ops) and "Europe/Zurich" not in html_of(ops)
    ids = {m["Message-ID"] for m in (ana, bob, ops)}
    assert len(ids) == 3, "each email has its own Message-ID"


def test_update_highlights_only_what_is_new_and_threads(app: Mailflow, sink: Sink) -> None:
    incident = declare(app)
    app.deliver_now(T0)
    starts = {a: m[0]["Message-ID"] for a, m in by_rcpt(sink).items()}
    sink.clear()

    t1 = T0 + timedelta(minutes=20)
    inc.post_update(app, incident, "Index on sessions table is corrupt; rebuilding", "ana@example.org", t1)
    inc.send_update(app, incident, t1)
    app.deliver_now(t1)
    first = by_rcpt(sink)
    msg = first["ops-team@example.org"][0]
    assert msg["Subject"] == "[INC-1] ISC Learn Platform: outage"
    assert msg["In-Reply-To"] == starts["ops-team@example.org"]
    assert msg["References"] == starts["ops-team@example.org"]
    new = highlighted(html_of(msg), ORANGE)
    assert len(new) == 1 and "Index on sessions table is corrupt" in new[0]
    assert "[NEW] 10:20 UTC, Ana Lima:" in text_of(msg), "people by their name"
    assert "Incident lead: Ana Lima <ana@example.org>" in text_of(msg)
    assert "Next communication at 11:20 UTC" in text_of(msg)
    sink.clear()

    t2 = t1 + timedelta(minutes=15)
    inc.change(app, incident, t2, "ana@example.org", severity="P2")
    inc.post_update(app, incident, "Rebuild at 60 %", "ana@example.org", t2)
    inc.send_update(app, incident, t2)
    app.deliver_now(t2)
    html = html_of(by_rcpt(sink)["ops-team@example.org"][0])
    new = " | ".join(highlighted(html, ORANGE))
    assert "Rebuild at 60 %" in new
    assert "P2 (medium" in new, "the changed severity fact is new"
    assert "Severity: P1 → P2" in new
    assert "Index on sessions table" not in new, "the earlier update is no longer new"
    assert "Index on sessions table" in html, "but it is still shown"


def test_update_with_nothing_new_still_goes_out(app: Mailflow, sink: Sink) -> None:
    incident = declare(app)
    inc.send_update(app, incident, T0 + timedelta(hours=1))
    app.deliver_now(T0 + timedelta(hours=1))
    text = text_of(by_rcpt(sink)["ops-team@example.org"][-1])
    assert "No new information since 10:00 UTC; investigation continues." in text


def test_solved_shows_resolution_in_green(app: Mailflow, sink: Sink) -> None:
    incident = declare(app)
    inc.post_update(app, incident, "Rebuilding the index", "ana@example.org", T0 + timedelta(minutes=5))
    end = T0 + timedelta(hours=2, minutes=5)
    inc.resolve(app, incident, end, "Rebuilt the index; restarted app servers; verified logins",
                "ana@example.org")
    app.deliver_now(end)
    msg = by_rcpt(sink)["ops-team@example.org"][-1]
    html = html_of(msg)
    green = highlighted(html, GREEN)
    assert len(green) == 1 and "Rebuilt the index; restarted app servers" in green[0]
    text = text_of(msg)
    assert "Started:  2026-11-24 10:00 UTC" in text
    assert "Ended:    2026-11-24 12:05 UTC" in text
    assert "Duration: 2 h 5 min" in text
    assert "ISC Learn Platform (complete downtime)" in text
    assert Incident.get_by_id(incident.id).status == "resolved"
    with pytest.raises(InvalidInput):
        inc.post_update(app, Incident.get_by_id(incident.id), "late", "ana@example.org", end)


def test_reply_text_cannot_inject_html_or_headers(app: Mailflow, sink: Sink) -> None:
    incident = declare(app, summary="<b>bold</b>\r\nBcc: evil@example.com")
    inc.post_update(app, incident, "<script>alert(1)</script><img src=x>", "x@example.org", T0)
    inc.send_update(app, incident, T0)
    app.deliver_now(T0)
    msg = by_rcpt(sink)["ops-team@example.org"][-1]
    html = html_of(msg)
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<img src=x>" not in html
    assert "evil@example.com" not in (msg["Bcc"] or "")
    assert all(r.rcpt_tos[0] != "evil@example.com" for r in sink.received)


def test_premailer_runs_once_per_communication(app: Mailflow, sink: Sink,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = render.inline_css
    monkeypatch.setattr(render, "inline_css", lambda html: calls.append(1) or real(html))
    declare(app, impacted=[f"user{i}@example.org" for i in range(30)])
    assert len(calls) == 1
    assert OutMessage.select().count() == 32


def test_bad_declarations_write_nothing(app: Mailflow) -> None:
    with pytest.raises(NotFound, match="learn"):
        declare(app, service="nope")
    with pytest.raises(InvalidInput, match="P0, P1, P2"):
        declare(app, severity="P7")
    with pytest.raises(InvalidInput, match="outage"):
        declare(app, impact="sideways")
    with pytest.raises(InvalidInput, match="not an email"):
        declare(app, impacted=["not an address"])
    assert Incident.select().count() == 0 and OutMessage.select().count() == 0
    with pytest.raises(NotFound, match="INC-9"):
        inc.get_incident("INC-9")


def test_recipients_and_sends_are_recorded(app: Mailflow, sink: Sink) -> None:
    incident = declare(app)
    app.deliver_now(T0)
    data = inc.describe(incident)
    assert {r["email"] for r in data["recipients"]} == {
        "ana@example.org", "ops-team@example.org", "student-council@example.org"}
    for r in data["recipients"]:
        assert [m["status"] for m in r["messages"]] == ["sent"]
    kinds = [e["kind"] for e in data["timeline"]]
    assert kinds == ["declared", "email"]
    assert data["next_communication_at"] == "2026-11-24T11:00:00Z"
    assert Recipient.select().where(Recipient.first_message_id.is_null()).count() == 0
    assert Entry.select().count() == 2


def test_template_overrides_are_checked_when_loaded(app: Mailflow, tmp_path) -> None:  # noqa: ANN001
    from mailflow.errors import TemplateError
    from mailflow.render import Renderer, builtin_templates

    folder = tmp_path / "mine"
    folder.mkdir()
    good = (builtin_templates() / "escalation.txt").read_text()
    (folder / "escalation.txt").write_text("Dear management,\n" + good)
    Renderer(folder).check()
    (folder / "escalation.txt").write_text(good.replace("{{ threshold|duration }}",
                                                        "{{ treshold|duration }}"))
    with pytest.raises(TemplateError, match="escalation.txt: unknown variable.*treshold"):
        Renderer(folder).check()
    (folder / "escalation.txt").write_text("{% if %}")
    with pytest.raises(TemplateError, match="escalation.txt:1:"):
        Renderer(folder).check()


def test_overrides_take_precedence(app: Mailflow, sink: Sink, project) -> None:  # noqa: ANN001
    from mailflow.config import load_config

    (project / "tpl").mkdir()
    (project / "tpl" / "start.txt").write_text("CUSTOM {{ incident.ref }} {{ recipient.greeting }}\n")
    config = project / "mailflow.toml"
    config.write_text('templates = "tpl"\n' + config.read_text())
    custom = Mailflow(load_config(config))
    declare(custom, impacted=[])
    custom.deliver_now(T0)
    assert text_of(by_rcpt(sink)["ana@example.org"][0]).startswith("CUSTOM INC-1 Hello Ana,")
    custom.close()


def test_a_stale_copy_cannot_reopen_a_resolved_incident(app: Mailflow, sink: Sink) -> None:
    stale = declare(app, impacted=[])
    other = Incident.get_by_id(stale.id)  # e.g. the daemon, resolving from a reply
    inc.resolve(app, other, T0 + timedelta(minutes=30), "Fixed", "bob@example.org")
    assert stale.status == "open", "this copy was read before the resolution"
    with pytest.raises(InvalidInput, match="already resolved"):
        inc.send_update(app, stale, T0 + timedelta(minutes=31))
    fresh = Incident.get_by_id(stale.id)
    assert fresh.status == "resolved" and fresh.next_comm_at is None


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Every test here that uses a project runs on SQLite and on PostgreSQL."""
    return str(request.param)
