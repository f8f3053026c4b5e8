"""Replies after the end: never just filed; `reopen` by reply (real inbound server) and by
the CLI returns the incident to open with its cadence, and everyone is told."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from mailflow import incidents as inc
from mailflow.app import Mailflow
from mailflow.models import Due, Entry, Incident
from mailflow.postmortem import draft
from mailflow.testing import Sink

from .conftest import T0
from .helpers import DECLARE, NOW, by_rcpt, declare, reply, reply_to_address, run, text_of


@pytest.fixture
def resolved(app: Mailflow, sink: Sink) -> Incident:
    incident = declare(app)
    inc.assign(app, incident, T0, "ana@example.org", communicator="chloe@example.org")
    inc.resolve(app, Incident.get_by_id(incident.id), T0 + timedelta(minutes=10),
                "Rebuilt the index", "ana@example.org")
    app.deliver_now(T0 + timedelta(minutes=10))
    sink.clear()
    return Incident.get_by_id(incident.id)


def test_a_reply_after_the_end_goes_to_the_lead_and_communicator_at_once(  # noqa: ANN001
        app, sink, resolved, inbound) -> None:
    outsider = "student-council@example.org"  # impacted, not in contacts.yaml
    code, _ = inbound.send(reply("seeing 502s again!", sender=outsider),
                           reply_to_address(app, resolved), mail_from=outsider)
    assert code == 250
    assert Incident.get_by_id(resolved.id).status == "resolved", "only told, not reopened"
    app.deliver_now(NOW)
    got = by_rcpt(sink)
    assert set(got) == {"ana@example.org", "chloe@example.org"}
    for to in ("ana@example.org", "chloe@example.org"):
        body = " ".join(text_of(got[to][0]).split())
        assert "seeing 502s again!" in body
        assert "reply `reopen`" in body and "`mailflow reopen INC-1`" in body
    [note] = Entry.select().where((Entry.incident == resolved) & (Entry.kind == "note"))
    assert note.text == "seeing 502s again!"


def test_an_outsider_cannot_reopen(app, sink, resolved, inbound) -> None:  # noqa: ANN001
    outsider = "student-council@example.org"
    code, _ = inbound.send(reply("reopen\n\nbroken again", sender=outsider),
                           reply_to_address(app, resolved), mail_from=outsider)
    assert code == 250
    assert Incident.get_by_id(resolved.id).status == "resolved"


def test_reopen_by_reply_restarts_the_cadence_and_tells_everyone(  # noqa: ANN001
        app, sink, resolved, inbound) -> None:
    msg = reply("reopen\n\nConfirmed: 502s are back since 10:15", sender="ana@example.org")
    code, _ = inbound.send(msg, reply_to_address(app, resolved), mail_from="ana@example.org")
    assert code == 250
    fresh = Incident.get_by_id(resolved.id)
    assert fresh.status == "open" and fresh.resolved_at is None
    every = app.config.cadence.update_every["P1"]
    assert fresh.next_comm_at == NOW + every
    pending = {(d.kind, d.due_at) for d in Due.select().where(
        (Due.incident == fresh) & Due.done_at.is_null())}
    assert ("mark", NOW + every) in pending
    assert ("reminder", NOW + every - app.config.cadence.reminder_before) in pending
    assert ("escalate", T0 + timedelta(hours=4)) in pending
    assert not any(kind == "postmortem" for kind, _ in pending)
    app.deliver_now(NOW)
    got = by_rcpt(sink)
    update = next(m for m in got["ops-team@example.org"] if m["X-Mailflow-Kind"] == "update")
    body = text_of(update)
    assert "Confirmed: 502s are back since 10:15" in body and "Reopened (was resolved)" in body
    # Reopened, then resolved again: the postmortem says so.
    inc.resolve(app, fresh, NOW + timedelta(minutes=30), "Replaced the disk", "ana@example.org")
    text = draft(app, Incident.get_by_id(resolved.id), NOW + timedelta(hours=1))
    assert "Reopened after a resolution" in text
    assert "Reopened (was resolved)" in text and "Replaced the disk" in text


def test_reopen_from_the_cli(project: Path, sink: Sink) -> None:
    assert run(project, *DECLARE).exit_code == 0
    assert run(project, "resolve", "INC-1", "--steps", "Rebuilt the index",
               now="2026-11-24T10:30:00Z").exit_code == 0
    sink.clear()
    result = run(project, "reopen", "INC-1", "--text", "502s again", now="2026-11-24T11:00:00Z")
    assert result.exit_code == 0, result.output
    assert "INC-1 open again; next communication at 12:00 UTC" in result.stdout
    kinds = {r.message["X-Mailflow-Kind"] for r in sink.received}
    assert kinds == {"update"} and len(sink.received) == 3
    shown = json.loads(run(project, "show", "INC-1", "--json").stdout)
    assert shown["status"] == "open"
    assert [e["text"] for e in shown["timeline"] if e["kind"] == "reopened"] == [
        "Reopened (was resolved): 502s again"]
    again = run(project, "reopen", "INC-1")
    assert again.exit_code == 1 and "INC-1 is open" in again.stderr


def test_one_cli_update_is_one_entry(project: Path, sink: Sink) -> None:
    assert run(project, *DECLARE).exit_code == 0
    result = run(project, "update", "INC-1", "--severity", "P2", "--impact", "degraded",
                 "--eta", "2h", "--next-steps", "Rebuild the index", "--text",
                 "Logins work again read-only", now="2026-11-24T10:20:00Z")
    assert result.exit_code == 0, result.output
    shown = json.loads(run(project, "show", "INC-1", "--json").stdout)
    [entry] = [e for e in shown["timeline"] if e["kind"] in ("update", "change")]
    lines = entry["text"].split("\n\n")
    assert lines[0] == "Logins work again read-only", "the person's text first"
    assert lines[1] == ("Severity: P1 → P2 · Scope: complete downtime → degraded · How long: "
                        "unknown: depends on the database restore → 2h · Next debugging steps: "
                        "Check replication lag → Rebuild the index")
    # A bad value refuses the whole call: nothing changed.
    bad = run(project, "update", "INC-1", "--severity", "P1", "--next-update", "9:00",
              now="2026-11-24T10:30:00Z")
    assert bad.exit_code == 1 and "has already passed today" in bad.stderr
    assert json.loads(run(project, "show", "INC-1", "--json").stdout)["severity"] == "P2"


def test_one_update_is_one_orange_item_in_the_next_email(project: Path, sink: Sink) -> None:
    assert run(project, *DECLARE).exit_code == 0
    sink.clear()
    assert run(project, "update", "INC-1", "--severity", "P2", "--eta", "2h", "--text",
               "Failover done", "--send", now="2026-11-24T10:20:00Z").exit_code == 0
    update = next(r.message for r in sink.received if r.rcpt_tos == ["ops-team@example.org"])
    assert text_of(update).count("[NEW] 10:20 UTC") == 1
