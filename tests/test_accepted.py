"""Replies answered 250 once stored, applied after (the daemon's `apply_after` mode)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from mailflow.app import Mailflow
from mailflow.config import load_config
from mailflow.inbound import InboundHandler
from mailflow.models import Accepted, Incident, InMessage, OutMessage
from mailflow.testing import Sink, write_config

from .helpers import NOW, InboundServer, posted, reply, reply_to_address


def test_a_contact_reply_is_answered_when_stored_and_applied_once(app, announced) -> None:  # noqa: ANN001
    to = reply_to_address(app, announced)
    with InboundServer(app, NOW, apply_after=True) as server:
        code, answer = server.send(reply("Restarted web-2."), to)
        assert code == 250 and b"accepted for INC-1" in answer, answer
        assert server.handler.backlog is not None
        assert server.handler.backlog.wait_applied(30)
    assert [e.text for e in posted(announced)] == ["Restarted web-2."]
    assert [e.at for e in posted(announced)] == [NOW], "applied at the time it was received"
    assert InMessage.select().count() == 1
    assert Accepted.select().count() == 0


def test_a_stranger_is_still_refused_before_data_ends(app, announced) -> None:  # noqa: ANN001
    with InboundServer(app, NOW, apply_after=True) as server:
        code, answer = server.send(reply("I am in.", sender="mallory@evil.example"),
                                   reply_to_address(app, announced),
                                   mail_from="mallory@evil.example")
    assert code == 550 and b"may not post" in answer, answer
    assert posted(announced) == [] and Accepted.select().count() == 0


def test_a_held_reply_applied_after_still_gets_its_receipt(app, announced) -> None:  # noqa: ANN001
    with InboundServer(app, NOW, apply_after=True) as server:
        code, _ = server.send(reply("severty: P3\n\nThe DB is fine now"),
                              reply_to_address(app, announced))
        assert code == 250
        assert server.handler.backlog is not None and server.handler.backlog.wait_applied(30)
    assert Incident.get_by_id(announced.id).severity == "P1"
    assert posted(announced) == [] and len(posted(announced, "held")) == 1
    assert [m.recipient for m in OutMessage.select().where(OutMessage.kind == "receipt")] == [
        "bob@example.org"]


def test_accepted_before_a_crash_is_applied_at_the_next_start_exactly_once(app, announced) -> None:  # noqa: ANN001
    raw = reply("Replica promoted.").as_bytes()
    # What a daemon killed between its COMMIT and applying leaves: the rows (one a retry
    # of the same message after a lost 250).
    with app.db.atomic():
        for _ in range(2):
            Accepted.create(incident_id=announced.id, received_at=NOW,
                            mail_from="bob@example.org", content=raw)
    for _ in range(2):  # two restarts: the second finds nothing left
        handler = InboundHandler(app, now=lambda: NOW, apply_after=True)
        assert handler.backlog is not None and handler.backlog.wait_applied(30)
        handler.close()
    assert [e.text for e in posted(announced)] == ["Replica promoted."]
    assert sorted(m.outcome for m in InMessage.select()) == ["duplicate", "posted"]
    assert Accepted.select().count() == 0


def test_close_applies_what_waits(app, announced) -> None:  # noqa: ANN001
    with InboundServer(app, NOW, apply_after=True) as server:
        server.handler.backlog.QUIET = 60.0  # type: ignore[union-attr]  # never idle enough
        server.handler.backlog.MAX_DELAY = 60.0  # type: ignore[union-attr]
        assert server.send(reply("Still on it."), reply_to_address(app, announced))[0] == 250
        assert Accepted.select().count() == 1, "not applied yet"
    # InboundServer's exit closes the handler, as the daemon's SIGTERM does.
    assert [e.text for e in posted(announced)] == ["Still on it."]
    assert Accepted.select().count() == 0


def test_a_locked_database_gives_451_and_stores_nothing(tmp_path: Path, sink: Sink) -> None:
    from .helpers import declare_incident

    write_config(tmp_path, sink.port, extra="[inbound]\nprocess_timeout = 1\n")
    app = Mailflow(load_config(tmp_path / "mailflow.toml"))
    incident = declare_incident(app)
    holder = sqlite3.connect(app.config.database, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        with InboundServer(app, NOW, apply_after=True) as server:
            answers: list[tuple[int, bytes]] = []
            sender = threading.Thread(target=lambda: answers.append(
                server.send(reply("Replica promoted."), reply_to_address(app, incident))))
            sender.start()
            sender.join(30)
            [(code, _)] = answers
            assert code == 451
            holder.execute("ROLLBACK")
            assert Accepted.select().count() == 0 and posted(incident) == []
    finally:
        holder.close()
        app.close()


@pytest.mark.parametrize("backend", ["postgresql"])
def test_on_postgresql_a_reply_is_applied_before_its_answer(app, announced) -> None:  # noqa: ANN001
    # Several daemons share the database: a backlog per daemon would apply another's rows.
    with InboundServer(app, NOW, apply_after=True) as server:
        assert server.handler.backlog is None
        code, answer = server.send(reply("Restarted web-2."), reply_to_address(app, announced))
        assert code == 250 and b"accepted for" not in answer, answer
        assert [e.text for e in posted(announced)] == ["Restarted web-2."]
    assert Accepted.select().count() == 0
