"""Several daemons on one PostgreSQL: heartbeats, one scheduler, takeover, rolling upgrades."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mailflow.app import Mailflow
from mailflow.cli import cli
from mailflow.config import load_config
from mailflow.ha import Membership, status
from mailflow.migrations import SchemaError
from mailflow.models import MODELS, Instance

from .conftest import T0
from .helpers import Process, wait_for


@pytest.fixture
def backend() -> str:
    """These drills are about several instances: PostgreSQL."""
    return "postgresql"


@pytest.fixture
def apps(project: Path) -> Iterator[list[Mailflow]]:
    """Two applications (two instances' connections) on one database."""
    made = [Mailflow(load_config(project / "mailflow.toml")) for _ in range(2)]
    yield made
    for a in made:
        a.close()


def test_one_instance_schedules_and_another_takes_over_when_it_dies(
        apps: list[Mailflow]) -> None:
    first, second = (Membership(a, T0) for a in apps)
    assert first.tick(T0) is True
    assert second.tick(T0) is False, "the lock is held: only one scheduler"
    assert first.tick(T0 + timedelta(seconds=5)) is True, "the holder keeps it"
    first._lock.close()  # its session ends, as when the process or its host dies
    wait_for(lambda: second.tick(T0 + timedelta(seconds=10)), what="the takeover")
    assert first.tick(T0 + timedelta(seconds=15)) is False, "the old holder notices and yields"
    first.leave()
    second.leave()


def test_status_lists_live_instances_and_the_scheduler_and_forgets_dead_ones(
        apps: list[Mailflow]) -> None:
    first, second = (Membership(a, T0) for a in apps)
    first.tick(T0)
    second.tick(T0)
    first.beat(T0)  # records that it holds the scheduler
    seen = status(apps[0], T0 + timedelta(seconds=2))
    assert len(seen.instances) == 2
    assert seen.scheduler is not None
    assert [i["scheduler"] for i in seen.instances].count(True) == 1
    # `second` stops cleanly: it leaves the list at once.
    second.leave()
    assert len(status(apps[0], T0 + timedelta(seconds=2)).instances) == 1
    # `first` is killed: it never beats again, and is forgotten after the takeover time.
    later = T0 + timedelta(seconds=40)
    assert status(apps[0], later).instances == []
    other = Membership(apps[1], later)
    other.beat(later)
    assert Instance.select().where(Instance.id == first.id).count() == 0
    other.leave()
    first.leave()


def test_an_instance_older_than_the_schema_stops(apps: list[Mailflow]) -> None:
    member = Membership(apps[0], T0)
    member.tick(T0)
    apps[1].db.execute_sql(
        "INSERT INTO migration (name, applied_at) VALUES ('9999_next_release', 'x')")
    with pytest.raises(SchemaError, match="newer mailflow"):
        member.tick(T0 + timedelta(seconds=11))
    member.leave()


def test_mailflow_status_command(project: Path, apps: list[Mailflow]) -> None:
    member = Membership(apps[0], T0)
    member.tick(T0)
    member.beat(T0)
    runner = CliRunner()
    env = {"MAILFLOW_NOW": (T0 + timedelta(seconds=3)).isoformat()}
    result = runner.invoke(cli, ["--config", str(project / "mailflow.toml"), "status"], env=env)
    assert result.exit_code == 0, result.output
    assert "instances: 1" in result.output and "scheduler" in result.output
    assert "heartbeat 3s ago" in result.output and "outbox: 0 queued" in result.output
    result = runner.invoke(cli, ["--config", str(project / "mailflow.toml"), "status",
                                 "--json"], env=env)
    data = json.loads(result.output)
    assert data["scheduler"]["pid"] == data["instances"][0]["pid"]
    apps[0].db.bind(MODELS)  # the command bound the models to its own (closed) database
    member.leave()


@pytest.mark.slow
def test_two_daemons_kill_9_the_scheduler_and_the_other_takes_over(project: Path,
                                                                   apps: list[Mailflow]) -> None:
    def holder() -> Any:
        # On this test's own connection (the models are bound to the last database opened).
        rows = apps[0].db.execute_sql(
            "SELECT pid FROM instance WHERE scheduler_since IS NOT NULL").fetchall()
        return rows[0][0] if len(rows) == 1 else None

    daemons = [Process(project, {}) for _ in range(2)]
    try:
        wait_for(lambda: holder() is not None, what="a scheduler")
        first = holder()
        victim = next(d for d in daemons if d.proc.pid == first)
        victim.proc.kill()
        victim.proc.wait(15)
        survivor = next(d for d in daemons if d is not victim)
        # [ha] takeover is 30 s by default; the lock is freed as soon as the server sees the
        # connection close, so this is much faster.
        wait_for(lambda: holder() == survivor.proc.pid, timeout=30, what="the takeover")
        assert survivor.logged("now runs the scheduler")
    finally:
        for d in daemons:
            d.close()


@pytest.mark.slow
def test_two_daemons_kill_9_and_a_database_restart_lose_nothing(
        tmp_path: Path, sink: Any, postgres_server: Any, pg_url: str) -> None:
    from mailflow.testing import run_crash_scenario, write_config

    def restart() -> None:
        postgres_server.stop("fast")  # every connection is cut, as in a failover
        postgres_server.start()

    config = write_config(tmp_path, sink.port, database=pg_url)
    report = run_crash_scenario(tmp_path, config, sink, senders=4, replies_each=100,
                                recipients=500, crashes=3, seed=7, daemons=2,
                                outage=restart, escalation_due=True)
    print(report.line())
    assert report.crashes == 3
    assert report.replies_acked == report.replies_sent, "replies in the gap were retried"
    assert report.acked_missing == [], "no 250 without a commit"
    assert report.posted_twice == []
    assert report.emails_missing == 0 and report.emails_queued > 500
    assert report.temporary > 0, "the restart happened while replies arrived"
    # The 4 h escalation fell due as the daemons started, amid the kills: it happened once,
    # whichever daemon held the scheduler, and its emails (management and the lead) went out.
    assert report.escalations == 1
    assert report.escalation_emails == 2
    assert report.escalation_emails_delivered == 2
    # The README's bound, per outbound connection ([outbound] concurrency, 2 by default): one
    # per crash, and one per daemon for the restart (the message whose mark was lost; the
    # next, already past its envelope, is withheld from DATA).
    assert report.outages == 1 and report.daemons == 2
    assert report.emails_duplicated <= (report.crashes + 2) * report.connections
    assert report.ok
