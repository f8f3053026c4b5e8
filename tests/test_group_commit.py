"""Group commit of inbound messages: many per COMMIT, each in its own savepoint."""

from __future__ import annotations

import threading

import pytest

from mailflow import incidents as inc
from mailflow import tokens
from mailflow.app import Mailflow
from mailflow.inbound import GroupCommit, InboundHandler, _Budget, _Job, _Late
from mailflow.models import Entry, open_database

from .conftest import T0
from .helpers import NOW, declare_incident, message


def note(app: Mailflow, text: str) -> Entry:
    """A timeline entry on INC-1, as a reply would add."""
    return inc.log(inc.get_incident("INC-1"), T0, "update", text, author="bob@example.org")


def test_one_failing_message_is_rolled_back_alone(app: Mailflow) -> None:
    declare_incident(app)

    def boom() -> None:
        note(app, "half of a message")
        raise ValueError("parser bug")

    gone = _Budget(0.001)
    gone.abandon()  # answered 451 already: must not be applied
    jobs = [_Job(lambda: note(app, "first").id, None), _Job(boom, None),
            _Job(lambda: note(app, "abandoned"), gone), _Job(lambda: note(app, "last").id, None)]
    GroupCommit(app.db)._commit(jobs)
    assert all(j.done for j in jobs)
    assert isinstance(jobs[1].error, ValueError) and isinstance(jobs[2].error, _Late)
    assert jobs[0].error is None and jobs[3].error is None
    # Committed: another connection sees exactly the two good messages.
    other = open_database(app.config.database)
    try:
        texts = [t for (t,) in other.execute_sql("SELECT text FROM entry WHERE kind = 'update'")]
    finally:
        other.close()
    assert texts == ["first", "last"]


def test_a_failed_commit_fails_every_message_of_the_batch(app: Mailflow) -> None:
    declare_incident(app)
    before = Entry.select().count()
    app.db.begin()  # the batch's BEGIN IMMEDIATE cannot start inside this transaction
    try:
        job = _Job(lambda: note(app, "lost"), None)
        GroupCommit(app.db)._commit([job])
    finally:
        app.db.rollback()
    assert job.done and job.error is not None
    assert Entry.select().count() == before


def test_concurrent_replies_share_commits_and_all_land(app: Mailflow) -> None:
    incident = declare_incident(app)
    handler = InboundHandler(app, now=lambda: NOW)
    cfg = app.config
    address = tokens.reply_address(cfg.reply_local, cfg.reply_domain, incident.id, cfg.secret)
    sizes: list[int] = []
    real = GroupCommit._commit

    def counting(self: GroupCommit, batch: list[_Job]) -> None:
        sizes.append(len(batch))
        real(self, batch)

    GroupCommit._commit = counting  # type: ignore[method-assign]
    try:
        def send(i: int) -> None:
            raw = message(f"update number {i}", message_id=f"<r{i}@client.example>")
            answer, _ = handler.process(raw.as_bytes(), "bob@example.org", [address])
            assert answer.startswith("250"), answer
        threads = [threading.Thread(target=send, args=(i,)) for i in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        GroupCommit._commit = real  # type: ignore[method-assign]
    texts = {e.text for e in Entry.select().where(Entry.kind == "update")}
    assert {f"update number {i}" for i in range(24)} <= texts
    assert sum(sizes) == 24  # every message applied once, in however many commits


def test_run_raises_the_jobs_own_error(app: Mailflow) -> None:
    with pytest.raises(KeyError):
        GroupCommit(app.db).run(lambda: {}["missing"], None)
