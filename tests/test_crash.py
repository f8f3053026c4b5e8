"""kill -9 the daemon while replies arrive and an update fans out: nothing lost or doubled.

Bound (documented in the README): an email may reach the relay twice only if the daemon
died after the relay took it and before the `sent` mark was written: at most one message
per connection per crash (each connection awaits its last mark before the next DATA), so
two per crash with the default concurrency of 2, one with concurrency 1.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mailflow.config import load_config
from mailflow.testing import Sink, run_crash_scenario

from .conftest import BACKENDS, write_config


@pytest.mark.slow
@pytest.mark.parametrize(("seed", "concurrency"), [(1, None), (2, 1)])
def test_kill_9_loses_nothing(tmp_path: Path, sink: Sink, seed: int, concurrency: int | None,
                              backend: str, request: pytest.FixtureRequest) -> None:
    database = request.getfixturevalue("pg_url") if backend == "postgresql" \
        else "state/mailflow.db"
    config = write_config(tmp_path, sink.port, database=database)
    if concurrency is not None:
        config.write_text(config.read_text() + f"concurrency = {concurrency}\n")
    connections = load_config(config).outbound.concurrency
    assert connections == (concurrency or 2), "two connections unless told otherwise"
    report = run_crash_scenario(tmp_path, config, sink, senders=4, replies_each=40,
                                recipients=200, crashes=3, seed=seed)
    print(report.line())
    assert report.connections == connections
    assert report.crashes == 3
    assert report.replies_acked == report.replies_sent, "the senders retried until acked"
    assert report.acked_missing == [], "every 250 is in the timeline"
    assert report.posted_twice == [], "and only once"
    assert report.replies_found == report.replies_sent
    assert report.emails_missing == 0, "every queued email reached the relay"
    assert report.emails_queued > 200, "the start and the update fanned out"
    assert report.emails_duplicated <= report.crashes * connections, \
        "at most one duplicate per connection per crash"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Every test here that uses a project runs on SQLite and on PostgreSQL."""
    return str(request.param)
