"""The PostgreSQL backend: migrations under the advisory lock, rollback, errors without
passwords. The shared suites (lifecycle, scheduler, outbox, crash) also run on it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from peewee import IntegerField

from mailflow import migrations
from mailflow.config import config_from_dict
from mailflow.migrations import MIGRATIONS, Migration, SchemaError
from mailflow.models import DatabaseUnavailable, Incident, is_postgres, open_database

from .dovecot import free_port


def test_a_url_opens_postgresql_and_runs_every_migration(pg_url: str) -> None:
    db = open_database(pg_url)
    try:
        assert is_postgres(db)
        assert migrations.applied(db) == [m.name for m in MIGRATIONS]
        assert "outmessage" in db.get_tables()
        assert Incident.select().count() == 0
    finally:
        db.close()


def test_config_keeps_a_url_and_resolves_a_path(tmp_path: Path) -> None:
    url = "postgresql://mailflow@db.example.org/mailflow"
    assert config_from_dict({"database": url, "secret": "s" * 20}, tmp_path / "mailflow.toml").database == url
    assert config_from_dict({"database": "x.db", "secret": "s" * 20}, tmp_path / "mailflow.toml").database \
        == (tmp_path / "x.db").resolve()


def test_two_processes_migrating_at_once_apply_each_step_once(pg_url: str) -> None:
    # Each process sleeps inside a slow extra migration: without the lock both would run
    # it (the second CREATE TABLE fails); with it the second waits, then finds it done.
    script = textwrap.dedent(f"""
        import sys
        from mailflow import migrations, models
        from mailflow.migrations import MIGRATIONS, Migration
        def slow(db, migrator):
            db.execute_sql("SELECT pg_sleep(1)")
            db.execute_sql("CREATE TABLE slow_step (x int)")
        migrations.MIGRATIONS.append(Migration("9990_slow_step", slow))
        models.open_database({pg_url!r}).close()
        print("ok")
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    import psycopg

    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT name FROM migration WHERE name = '9990_slow_step'")
        assert len(rows.fetchall()) == 1


def test_a_failed_migration_rolls_back_on_postgresql(pg_url: str) -> None:
    open_database(pg_url).close()

    def broken(db: Any, migrator: Any) -> None:
        migrator.add_column("incident", "half_done", IntegerField(null=True)).run()
        raise RuntimeError("disk full")

    db = open_database(pg_url)
    try:
        with pytest.raises(SchemaError, match="rolled back"):
            migrations.upgrade(db, pg_url, migrations=[*MIGRATIONS, Migration("9991_b", broken)])
        assert "half_done" not in {c.name for c in db.get_columns("incident")}
        assert "9991_b" not in migrations.applied(db)
    finally:
        db.close()


def test_code_older_than_the_schema_refuses_and_hides_the_password(pg_url: str) -> None:
    db = open_database(pg_url)
    db.execute_sql("INSERT INTO migration (name, applied_at) VALUES ('9999_future', 'x')")
    db.close()
    url = pg_url.replace("mailflow@", "mailflow:hunter2@")  # trust auth ignores it
    with pytest.raises(SchemaError, match="newer mailflow") as err:
        open_database(url)
    assert "hunter2" not in str(err.value) and ":***@" in str(err.value)


def test_a_server_that_is_down_is_one_clear_error_without_the_password() -> None:
    url = f"postgresql://mailflow:hunter2@127.0.0.1:{free_port()}/mailflow"
    with pytest.raises(DatabaseUnavailable, match="cannot connect to PostgreSQL") as err:
        open_database(url)
    assert "hunter2" not in str(err.value)


# --- several instances on one database -----------------------------------------------


@pytest.fixture
def backend() -> str:
    """The projects of this module are on PostgreSQL."""
    return "postgresql"


@pytest.fixture
def two(project: Path) -> Any:
    """Two instances (two applications, their own connections) on one PostgreSQL database."""
    from mailflow.app import Mailflow
    from mailflow.config import load_config

    apps = [Mailflow(load_config(project / "mailflow.toml")) for _ in range(2)]
    yield apps
    for a in apps:
        a.close()


def _queue(app: Any, n: int) -> None:
    from .conftest import T0

    with app.db.atomic():
        app.outbox.enqueue(None, "notice", "incidents@example.org",
                           [(f"r{i}@example.org", f"<m{i}@x>", b"Subject: x\r\n\r\nx\r\n")
                            for i in range(n)], T0)


def test_two_instances_claiming_at_once_never_take_the_same_email(two: Any) -> None:
    import threading

    from .conftest import T0

    a, b = two
    _queue(a, 300)
    got: dict[int, list[int]] = {}
    start = threading.Barrier(2)

    def claim(i: int, app: Any) -> None:
        start.wait()
        got[i] = [m.id for m in app.outbox.claim(T0, 200)]

    threads = [threading.Thread(target=claim, args=(i, app)) for i, app in enumerate(two)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not set(got[0]) & set(got[1]), "SKIP LOCKED: no row claimed twice"
    assert len(got[0]) + len(got[1]) == 300
    assert a.outbox.claim(T0, 200) == [] and b.outbox.claim(T0, 200) == []


def test_a_dead_instances_claims_are_taken_over_at_once(two: Any, project: Path) -> None:
    from mailflow.app import Mailflow
    from mailflow.config import load_config

    from .conftest import T0
    from .helpers import wait_for

    a, b = two
    _queue(a, 5)
    dead = Mailflow(load_config(project / "mailflow.toml"))
    assert len(dead.outbox.claim(T0, 200)) == 5
    assert b.outbox.claim(T0, 200) == [], "its claims hold while its connection lives"
    gone = dead.outbox._claimer_id()
    dead.close()  # as a kill -9 does: the server drops its connections
    # The server ends the backend a moment after the client hung up.
    wait_for(lambda: not b.db.execute_sql("SELECT 1 FROM pg_stat_activity WHERE pid = %s",
                                          (gone,)).fetchall(), what="backend gone")
    taken = b.outbox.claim(T0, 200)  # same moment: no lease had to run out
    assert len(taken) == 5


def test_the_same_reply_arriving_at_two_instances_is_posted_once(two: Any) -> None:
    import threading

    from mailflow.models import Entry
    from mailflow.posting import accept_reply
    from mailflow.replies import parse_reply

    from .conftest import T0
    from .helpers import declare_incident, message

    a, b = two
    incident = declare_incident(a)
    raw = message("DB restored from backup", sender="Ana Lima <ana@example.org>",
                  message_id="<same@client.example>").as_bytes()
    start = threading.Barrier(2)
    codes: list[int] = []

    def deliver(app: Any) -> None:
        from mailflow.models import Incident

        start.wait()
        try:
            mine = Incident.get_by_id(incident.id)
            codes.append(accept_reply(app, mine, parse_reply(raw), raw, "ana@example.org",
                                      T0).code)
        finally:
            for each in two:  # this thread's connections (peewee keeps one per thread)
                each.db.close()

    threads = [threading.Thread(target=deliver, args=(app,)) for app in two]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [250, 250]
    posted = Entry.select().where((Entry.incident == incident.id)
                                  & Entry.text.contains("DB restored")).count()
    assert posted == 1
