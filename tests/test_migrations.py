"""Schema migrations: old databases upgrade with their data, a failed step rolls back."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from peewee import IntegerField

from mailflow import migrations
from mailflow.app import Mailflow
from mailflow.config import load_config
from mailflow.migrations import MIGRATIONS, Migration, SchemaError
from mailflow.models import MODELS, Entry, Incident, InMessage, OutMessage, Recipient, open_database
from mailflow.testing import Sink

from .conftest import T0, write_config

SCHEMAS = Path(__file__).parent / "fixtures" / "schemas"

# Rows every recorded schema can hold: two incidents, their timeline, recipients, a queued
# and a sent email, scheduled work and an accepted reply.
ROWS = [
    """INSERT INTO incident VALUES (1,'learn','ISC Learn Platform','[INC-1] ISC Learn Platform: outage',
       'P1','outage','Learn returns 502','["student-council@example.org"]','unknown','restart DB',
       'check lag','ana@example.org','2026-11-24 10:00:00',NULL,NULL,'open','2026-11-24 10:00:00',
       NULL,NULL,'2026-11-24 11:00:00','2026-11-24 10:00:00','{"summary": "Learn returns 502"}',
       '','',0)""",
    """INSERT INTO incident VALUES (2,'api','Public API','[INC-2] Public API: degraded','P3',
       'degraded','slow','[]','','','',NULL,NULL,NULL,NULL,'resolved','2026-11-20 09:00:00',
       '2026-11-20 12:00:00',NULL,NULL,'2026-11-20 12:00:00',NULL,'restarted','',1)""",
    """INSERT INTO entry (incident_id, at, kind, author, text, data, communicated_at) VALUES
       (1,'2026-11-24 10:00:00','declared','ana@example.org','Learn returns 502',NULL,
        '2026-11-24 10:00:00'),
       (1,'2026-11-24 10:20:00','update','ben@example.org','Index is corrupt',NULL,NULL),
       (2,'2026-11-20 12:00:00','resolved','ana@example.org','restarted',NULL,NULL)""",
    """INSERT INTO recipient (incident_id, email, name, reason, added_at, first_message_id, status,
       last_error) VALUES
       (1,'ana@example.org','Ana Lima','stakeholders','2026-11-24 10:00:00','<a@x>','active',''),
       (1,'teachers@example.org','','learn-users','2026-11-24 10:00:00','<b@x>','active','')""",
    """INSERT INTO due (incident_id, kind, key, due_at, done_at, outcome) VALUES
       (1,'reminder','2026-11-24T11:00','2026-11-24 10:50:00',NULL,''),
       (1,'mark','2026-11-24T11:00','2026-11-24 11:00:00',NULL,'')""",
    """INSERT INTO inmessage (incident_id, received_at, mail_from, sender, message_id, raw, outcome)
       VALUES (1,'2026-11-24 10:20:00','ben@example.org','ben@example.org','<r1@x>',
       X'46726f6d3a2062656e','posted')""",
]
QUEUED = """INSERT INTO outmessage (incident_id, kind, recipient, envelope_from, message_id, raw,
    created_at, next_attempt_at, claimed_until, attempts, status, sent_at, last_error) VALUES
    (1,'update','teachers@example.org','incidents@example.org','<q1@example.org>',
     CAST('From: incidents@example.org' || char(13, 10) || 'To: teachers@example.org'
     || char(13, 10) || 'Subject: [INC-1]' || char(13, 10) || char(13, 10) || 'hello'
     || char(13, 10) AS BLOB),
     '2026-11-24 10:00:00','2026-11-24 10:00:00',NULL,0,'queued',NULL,''),
    (1,'start','ana@example.org','incidents@example.org','<s1@example.org>',X'00',
     '2026-11-24 10:00:00','2026-11-24 10:00:00',NULL,1,'sent','2026-11-24 10:00:01','')"""


def build_old(path: Path, ddl_file: str) -> None:
    """A database as an earlier mailflow left it: its recorded DDL, user_version 1, data."""
    conn = sqlite3.connect(path)
    conn.executescript((SCHEMAS / ddl_file).read_text())
    for sql in [*ROWS, QUEUED]:
        conn.execute(sql)
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()


def schema_of(path: Path) -> dict[str, set[str]]:
    """Table → column names, and the index names, of a database file."""
    conn = sqlite3.connect(path)
    out: dict[str, set[str]] = {}
    tables = [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")]
    for table in tables:
        out[table] = {r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')}
    out["<indexes>"] = {r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type='index' AND sql IS NOT NULL")}
    conn.close()
    return out


def models_schema(tmp_path: Path) -> dict[str, set[str]]:
    """What models.py expects: its tables created directly, with no migration."""
    path = tmp_path / "models.db"
    from peewee import SqliteDatabase
    db = SqliteDatabase(str(path))
    with db.bind_ctx(MODELS):
        db.create_tables(MODELS)
    db.close()
    return schema_of(path)


@pytest.mark.parametrize("ddl", ["0001_first_release.sql", "0005_before_migrations.sql"])
def test_an_old_database_upgrades_with_everything_intact(tmp_path: Path, ddl: str) -> None:
    path = tmp_path / "mailflow.db"
    build_old(path, ddl)
    db = open_database(path)
    try:
        assert migrations.applied(db) == [m.name for m in MIGRATIONS]
        assert [i.ref for i in Incident.select().order_by(Incident.id)] == ["INC-1", "INC-2"]
        one = Incident.get_by_id(1)
        assert one.impacted == ["student-council@example.org"]
        assert one.last_sent == {"summary": "Learn returns 502"}
        assert one.next_comm_at.isoformat() == "2026-11-24T11:00:00+00:00"
        assert [e.text for e in Entry.select().order_by(Entry.id)] == [
            "Learn returns 502", "Index is corrupt", "restarted"]
        assert {r.email for r in Recipient.select()} == {"ana@example.org",
                                                          "teachers@example.org"}
        queued = OutMessage.get(OutMessage.status == "queued")
        assert queued.recipient == "teachers@example.org" and queued.claimed_by is None
        assert queued.expires_at is None and bytes(queued.content).endswith(b"hello\r\n")
        assert bytes(InMessage.get().content) == b"From: ben"
    finally:
        db.close()
    # The upgraded file has every column and index today's models use.
    got, want = schema_of(path), models_schema(tmp_path)
    for table, columns in want.items():
        assert columns <= got[table], table
    # The backup is the database as it was: the old schema, the same rows.
    backup = tmp_path / "mailflow.db.bak-0001"
    assert backup.exists() and backup.stat().st_mode & 0o777 == 0o600
    conn = sqlite3.connect(backup)
    assert conn.execute("SELECT count(*) FROM entry").fetchone() == (3,)
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name='migration'").fetchone() \
        == (0,)
    conn.close()


def test_the_queued_email_of_an_old_database_is_delivered_after_the_upgrade(
        tmp_path: Path, sink: Sink) -> None:
    write_config(tmp_path, sink.port)
    (tmp_path / "state").mkdir()
    build_old(tmp_path / "state" / "mailflow.db", "0001_first_release.sql")
    app = Mailflow(load_config(tmp_path / "mailflow.toml"))
    try:
        report = app.deliver_now(T0)
    finally:
        app.close()
    assert report.sent == 1
    assert [r.rcpt_tos for r in sink.received] == [["teachers@example.org"]]
    assert sink.messages()[0]["Subject"] == "[INC-1]"


def test_a_new_database_gets_the_models_schema(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    open_database(path).close()
    got, want = schema_of(path), models_schema(tmp_path)
    got.pop("migration")
    assert got == want
    assert not list(tmp_path.glob("new.db.bak-*")), "nothing to back up in a new file"


def test_opening_again_applies_nothing_and_makes_no_backup(tmp_path: Path) -> None:
    path = tmp_path / "mailflow.db"
    open_database(path).close()
    db = open_database(path)
    assert migrations.pending(db) == []
    db.close()
    assert not list(tmp_path.glob("*.bak-*"))


def test_a_failing_migration_rolls_back_and_says_so(tmp_path: Path) -> None:
    path = tmp_path / "mailflow.db"
    open_database(path).close()

    def half(db, migrator):  # type: ignore[no-untyped-def]
        migrator.add_column("incident", "half_done", IntegerField(null=True)).run()
        db.execute_sql("INSERT INTO entry (incident_id) VALUES (NULL)")  # NOT NULL: fails

    broken = [*MIGRATIONS, Migration("0099_half", half)]
    db = open_database(path)
    try:
        with pytest.raises(SchemaError, match=r"0099_half failed and was rolled back"):
            migrations.upgrade(db, path, migrations=broken)
        assert "half_done" not in {c.name for c in db.get_columns("incident")}
        assert "0099_half" not in migrations.applied(db)
    finally:
        db.close()
    assert (tmp_path / f"mailflow.db.bak-{MIGRATIONS[-1].name.split('_')[0]}").exists()


def test_a_database_from_a_newer_mailflow_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "mailflow.db"
    open_database(path).close()
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO migration VALUES ('0999_from_the_future', '2027-01-01T00:00:00Z')")
    conn.commit()
    conn.close()
    with pytest.raises(SchemaError, match="newer mailflow.*0999_from_the_future"):
        open_database(path)


def test_the_cli_reports_a_newer_database_in_one_line(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from mailflow.cli import cli
    config = write_config(tmp_path, None)
    open_database(tmp_path / "state" / "mailflow.db").close()
    conn = sqlite3.connect(tmp_path / "state" / "mailflow.db")
    conn.execute("INSERT INTO migration VALUES ('0999_from_the_future', '2027-01-01T00:00:00Z')")
    conn.commit()
    conn.close()
    result = CliRunner().invoke(cli, ["--config", str(config), "list"])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "upgrade mailflow" in result.output


def test_migration_names_are_numbered_in_order_and_unique() -> None:
    numbers = [m.number for m in MIGRATIONS]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    assert len({m.name for m in MIGRATIONS}) == len(MIGRATIONS)
