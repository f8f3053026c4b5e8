"""The PostgreSQL fixture is a real server: tests on the postgresql backend reach it."""

from __future__ import annotations

from typing import Any


def test_fixture_server_answers_and_gives_each_test_its_own_database(
        postgres_server: Any, pg_url: str) -> None:
    import psycopg

    with psycopg.connect(pg_url) as conn:
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (1)")
        version = conn.execute("SHOW server_version").fetchone()[0]
        port = conn.execute("SHOW port").fetchone()[0]
    assert int(version.split(".")[0]) >= 13
    assert int(port) == postgres_server.port
    with psycopg.connect(postgres_server.fresh()) as other:
        assert other.execute("SELECT to_regclass('t')").fetchone()[0] is None
