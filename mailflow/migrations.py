"""Numbered schema migrations, recorded in the `migration` table, each in one transaction.

Every change to the schema is a new entry appended to `MIGRATIONS`; an existing entry is
never edited once it has landed, because databases out there already ran it. A migration
is a function of the database and a `playhouse.migrate` migrator (portable DDL); tables
are created from models frozen inside the migration, not from `models.py`, so that a
later change to a model cannot change what an old migration does.

`upgrade()` runs on every open of the database (the daemon and every CLI command): it
backs the file up (`<db>.bak-<version>`, SQLite's online backup) before the first
pending migration, applies each pending one in its own transaction under a write lock
(two processes starting at once cannot both migrate), and refuses a database that a
newer mailflow has already migrated further than this code knows.

Every migration runs on SQLite and on PostgreSQL: DDL goes through peewee (models and the
migrator), or is written for both where it is raw. On PostgreSQL the whole upgrade holds a
session advisory lock (`MIGRATION_LOCK`), so of several daemons starting at once one
migrates and the others wait, then find nothing to do; there is no file to back up there
(the server's own backups and standby are the copy).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from peewee import (
    AutoField,
    BlobField,
    BooleanField,
    CharField,
    Database,
    DateTimeField,
    ForeignKeyField,
    IntegerField,
    Model,
    PostgresqlDatabase,
    TextField,
)
from playhouse.migrate import SchemaMigrator

from . import clock
from .errors import MailflowError

MIGRATION_TABLE = "migration"
# pg_advisory_lock key of the upgrade (any fixed 64-bit number; "mailflow" in ASCII).
MIGRATION_LOCK = 0x6D61696C666C6F77


class SchemaError(MailflowError):
    """The database's schema cannot be used or upgraded by this version of mailflow."""


@dataclass(frozen=True)
class Migration:
    """One step of the schema: a stable name (`0003_outbox_claimed_by`) and what it does."""

    name: str
    apply: Callable[[Database, SchemaMigrator], None]

    @property
    def number(self) -> int:
        """The leading number of the name: migrations run in this order."""
        return int(self.name.split("_", 1)[0])


def _columns(db: Database, table: str) -> set[str]:
    return {c.name for c in db.get_columns(table)}


def _add_column(db: Database, migrator: SchemaMigrator, table: str, name: str,
                field: object) -> None:
    # Idempotent: a database created between two landings may already have the column
    # (the old code created every table from the models of its day).
    if name not in _columns(db, table):
        migrator.add_column(table, name, field).run()


def _add_index(db: Database, table: str, columns: tuple[str, ...], unique: bool = False) -> None:
    name = f"{table}_{'_'.join(columns)}"
    cols = ", ".join(f'"{c}"' for c in columns)
    kind = "UNIQUE INDEX" if unique else "INDEX"
    db.execute_sql(f'CREATE {kind} IF NOT EXISTS "{name}" ON "{table}" ({cols})')


# --- the migrations -------------------------------------------------------------------


def _m0001_initial(db: Database, migrator: SchemaMigrator) -> None:
    """The schema as first released: incidents, timeline, recipients, outbox, due, inbox."""

    class Base(Model):
        class Meta:
            database = db

    class Incident(Base):
        id = AutoField()
        service = CharField()
        service_title = CharField()
        subject = CharField()
        severity = CharField()
        impact = CharField()
        summary = TextField()
        impacted = TextField()
        eta = TextField()
        started = TextField()
        next_steps = TextField()
        lead = CharField(null=True)
        lead_since = DateTimeField(null=True)
        communicator = CharField(null=True)
        scribe = CharField(null=True)
        status = CharField()
        declared_at = DateTimeField()
        resolved_at = DateTimeField(null=True)
        closed_at = DateTimeField(null=True)
        next_comm_at = DateTimeField(null=True)
        last_comm_at = DateTimeField(null=True)
        last_sent = TextField(null=True)
        resolution = TextField()
        follow_up = TextField()
        postmortem_done = BooleanField()

        class Meta:
            table_name = "incident"

    class Due(Base):
        id = AutoField()
        incident = ForeignKeyField(Incident, on_delete="CASCADE")
        kind = CharField()
        key = CharField()
        due_at = DateTimeField()
        done_at = DateTimeField(null=True)
        outcome = CharField()

        class Meta:
            table_name = "due"
            indexes = ((("incident", "kind", "key"), True), (("done_at", "due_at"), False))

    class Entry(Base):
        id = AutoField()
        incident = ForeignKeyField(Incident, on_delete="CASCADE")
        at = DateTimeField(index=True)
        kind = CharField()
        author = CharField()
        text = TextField()
        data = TextField(null=True)
        communicated_at = DateTimeField(null=True)

        class Meta:
            table_name = "entry"

    class InMessage(Base):
        id = AutoField()
        incident = ForeignKeyField(Incident, null=True, on_delete="SET NULL")
        received_at = DateTimeField()
        mail_from = CharField()
        sender = CharField()
        message_id = CharField(index=True)
        content = BlobField(column_name="raw")  # `raw` would shadow Model.raw()
        outcome = CharField()

        class Meta:
            table_name = "inmessage"

    class OutMessage(Base):
        id = AutoField()
        incident = ForeignKeyField(Incident, null=True, on_delete="CASCADE")
        kind = CharField()
        recipient = CharField()
        envelope_from = CharField()
        message_id = CharField()
        content = BlobField(column_name="raw")  # `raw` would shadow Model.raw()
        created_at = DateTimeField()
        next_attempt_at = DateTimeField()
        claimed_until = DateTimeField(null=True)
        attempts = IntegerField()
        status = CharField()
        sent_at = DateTimeField(null=True)
        last_error = TextField()

        class Meta:
            table_name = "outmessage"
            indexes = ((("status", "next_attempt_at"), False),)

    class Recipient(Base):
        id = AutoField()
        incident = ForeignKeyField(Incident, on_delete="CASCADE")
        email = CharField()
        name = CharField()
        reason = CharField()
        added_at = DateTimeField()
        first_message_id = CharField(null=True)
        status = CharField()
        last_error = TextField()

        class Meta:
            table_name = "recipient"
            indexes = ((("incident", "email"), True),)

    db.create_tables([Incident, Due, Entry, InMessage, OutMessage, Recipient], safe=True)


def _m0002_outbox_recipient_order(db: Database, migrator: SchemaMigrator) -> None:
    """Index for "is an earlier message to this recipient still waiting?" at every claim."""
    _add_index(db, "outmessage", ("recipient", "status", "id"))


def _m0003_outbox_claimed_by(db: Database, migrator: SchemaMigrator) -> None:
    """The sender's PID on a claim: a dead sender's claim is void at once."""
    _add_column(db, migrator, "outmessage", "claimed_by", IntegerField(null=True))


def _m0004_reply_duplicate_index(db: Database, migrator: SchemaMigrator) -> None:
    """The duplicate check of every reply looks up (incident, Message-ID), not Message-ID."""
    _add_index(db, "inmessage", ("incident_id", "message_id"))
    db.execute_sql('DROP INDEX IF EXISTS "inmessage_message_id"')


def _m0005_outbox_expires_at(db: Database, migrator: SchemaMigrator) -> None:
    """A reminder is worthless after its deadline: the outbox drops it then."""
    _add_column(db, migrator, "outmessage", "expires_at", DateTimeField(null=True))


def _m0006_alerts_status_subscribers(db: Database, migrator: SchemaMigrator) -> None:
    """Alerts that open drafts, the status page's updates, and email subscribers."""

    class Base(Model):
        class Meta:
            database = db

    class Incident(Base):
        id = AutoField()

        class Meta:
            table_name = "incident"

    class Alert(Base):
        id = AutoField()
        key = CharField(index=True)
        source = CharField()
        incident = ForeignKeyField(Incident, null=True, on_delete="CASCADE")
        status = CharField()
        summary = TextField()
        labels = TextField()
        first_at = DateTimeField()
        last_at = DateTimeField()
        count = IntegerField()

        class Meta:
            table_name = "alert"

    class StatusUpdate(Base):
        id = AutoField()
        incident = ForeignKeyField(Incident, on_delete="CASCADE")
        at = DateTimeField()
        kind = CharField()
        status = CharField()
        text = TextField()
        public_text = TextField(null=True)
        published_at = DateTimeField(null=True)
        published_by = CharField()

        class Meta:
            table_name = "statusupdate"

    class Subscriber(Base):
        id = AutoField()
        email = CharField()
        service = CharField()
        status = CharField()
        requested_at = DateTimeField()
        confirmed_at = DateTimeField(null=True)
        unsubscribed_at = DateTimeField(null=True)

        class Meta:
            table_name = "subscriber"
            indexes = ((("email", "service"), True),)

    db.create_tables([Alert, StatusUpdate, Subscriber], safe=True)


def _m0007_inmessage_digest(db: Database, migrator: SchemaMigrator) -> None:
    """A declaration's sender + body digest: the same one within an hour declares once."""
    _add_column(db, migrator, "inmessage", "digest", CharField(default=""))
    _add_index(db, "inmessage", ("digest",))


def _m0008_outbox_priority_and_failure_notice(db: Database, migrator: SchemaMigrator) -> None:
    """Mail for the lead goes ahead of a fan-out; a failure is told to the lead once."""
    _add_column(db, migrator, "outmessage", "priority", IntegerField(default=0))
    _add_column(db, migrator, "outmessage", "failure_told_at", DateTimeField(null=True))


def _m0009_recipient_via(db: Database, migrator: SchemaMigrator) -> None:
    """Which lists brought a recipient in ("*": named directly), for per-list audiences."""
    _add_column(db, migrator, "recipient", "via", TextField(default=""))


def _m0010_imap_messages(db: Database, migrator: SchemaMigrator) -> None:
    """Mail read from an IMAP mailbox: each message applied once, and whether it can be read."""

    class Base(Model):
        class Meta:
            database = db

    class ImapMessage(Base):
        id = AutoField()
        mailbox = CharField()
        uidvalidity = IntegerField()
        uid = IntegerField()
        message_id = CharField()
        outcome = CharField()
        at = DateTimeField()

        class Meta:
            table_name = "imapmessage"
            indexes = ((("mailbox", "uidvalidity", "uid"), True),
                       (("mailbox", "message_id"), False))

    class ImapState(Base):
        mailbox = CharField(primary_key=True)
        down_since = DateTimeField(null=True)
        error = TextField(default="")
        checked_at = DateTimeField(null=True)

        class Meta:
            table_name = "imapstate"

    db.create_tables([ImapMessage, ImapState], safe=True)


def _m0011_instances(db: Database, migrator: SchemaMigrator) -> None:
    """The daemons working on this database, with their heartbeat (`mailflow status`)."""

    class Instance(Model):
        id = AutoField()
        host = CharField()
        pid = IntegerField()
        version = CharField()
        started_at = DateTimeField()
        heartbeat_at = DateTimeField()
        scheduler_since = DateTimeField(null=True)  # holds the scheduler's lock since then

        class Meta:
            database = db
            table_name = "instance"

    db.create_tables([Instance], safe=True)


def _m0012_accepted_replies(db: Database, migrator: SchemaMigrator) -> None:
    """Replies answered 250 and not applied yet (the daemon applies them after answering)."""

    class Accepted(Model):
        id = AutoField()
        incident_id = IntegerField()
        received_at = DateTimeField()
        mail_from = CharField(default="")
        content = BlobField(column_name="raw")  # not `raw`: that is peewee's Model.raw()

        class Meta:
            database = db
            table_name = "accepted"

    db.create_tables([Accepted], safe=True)


MIGRATIONS: list[Migration] = [
    Migration("0001_initial", _m0001_initial),
    Migration("0002_outbox_recipient_order", _m0002_outbox_recipient_order),
    Migration("0003_outbox_claimed_by", _m0003_outbox_claimed_by),
    Migration("0004_reply_duplicate_index", _m0004_reply_duplicate_index),
    Migration("0005_outbox_expires_at", _m0005_outbox_expires_at),
    Migration("0006_alerts_status_subscribers", _m0006_alerts_status_subscribers),
    Migration("0007_inmessage_digest", _m0007_inmessage_digest),
    Migration("0008_outbox_priority_and_failure_notice",
              _m0008_outbox_priority_and_failure_notice),
    Migration("0009_recipient_via", _m0009_recipient_via),
    Migration("0010_imap_messages", _m0010_imap_messages),
    Migration("0011_instances", _m0011_instances),
    Migration("0012_accepted_replies", _m0012_accepted_replies),
]


# --- running them ---------------------------------------------------------------------


def _ensure_table(db: Database) -> None:
    db.execute_sql(
        f'CREATE TABLE IF NOT EXISTS "{MIGRATION_TABLE}" '
        '("name" VARCHAR(255) NOT NULL PRIMARY KEY, "applied_at" VARCHAR(40) NOT NULL)'
    )


def applied(db: Database) -> list[str]:
    """Names of the migrations this database has run, in order (empty for a new file)."""
    if not db.table_exists(MIGRATION_TABLE):
        return []
    rows = db.execute_sql(f'SELECT "name" FROM "{MIGRATION_TABLE}" ORDER BY "name"')
    return [r[0] for r in rows.fetchall()]


def pending(db: Database, migrations: list[Migration] | None = None) -> list[Migration]:
    """The migrations this database has not run yet."""
    done = set(applied(db))
    return [m for m in (migrations or MIGRATIONS) if m.name not in done]


def _record(db: Database, name: str, now: datetime) -> None:
    p = db.param
    db.execute_sql(f'INSERT INTO "{MIGRATION_TABLE}" ("name", "applied_at") VALUES ({p}, {p})',
                   (name, now.isoformat().replace("+00:00", "Z")))


def _adopt_legacy(db: Database, now: datetime) -> None:
    """A database from before this table existed (PRAGMA user_version 1) has run 0001.

    Its later columns and indexes may or may not be there, depending on the version
    that created it; 0002 onwards are idempotent and fill in what is missing.
    """
    if not applied(db) and db.table_exists("incident"):
        _record(db, MIGRATIONS[0].name, now)


def check_not_newer(db: Database, where: str) -> None:
    """Raise SchemaError if a newer mailflow migrated this database past this code."""
    _check_not_newer(db, MIGRATIONS, where)


def _check_not_newer(db: Database, migrations: list[Migration], where: str) -> None:
    known = {m.name for m in migrations}
    unknown = [name for name in applied(db) if name not in known]
    if unknown:
        raise SchemaError(
            f"{where}: the database was upgraded by a newer mailflow (migration {unknown[-1]});"
            " this version would write the old shape: upgrade mailflow on this host")


def backup(db: Database, path: Path, version: str) -> Path | None:
    """An online copy of the SQLite file at `<path>.bak-<version>`, before migrating it."""
    if str(path) == ":memory:":
        return None
    target = path.with_name(f"{path.name}.bak-{version}")
    dst = sqlite3.connect(str(target))
    try:
        db.connection().backup(dst)
    finally:
        dst.close()
    target.chmod(0o600)  # the copy holds the same addresses and replies as the database
    return target


def _postgres(db: Database) -> bool:
    return isinstance(db, PostgresqlDatabase)


def upgrade(db: Database, path: Path | str, now: datetime | None = None,
            migrations: list[Migration] | None = None) -> list[str]:
    """Apply every pending migration, each in one transaction; returns the names applied."""
    if not _postgres(db):
        return _upgrade(db, Path(path), str(path), now, migrations)
    # The lock is the session's: held across the per-migration transactions, released
    # however the upgrade ends (and by the server if this process dies).
    db.execute_sql("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    try:
        return _upgrade(db, None, display_url(str(path)), now, migrations)
    finally:
        db.execute_sql("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))


def display_url(url: str) -> str:
    """The URL without its password, for messages and logs (they never show it)."""
    return re.sub(r"^(\w+://[^:/@]*):[^@]*@", r"\1:***@", url)


def _upgrade(db: Database, path: Path | None, where: str, now: datetime | None,
             migrations: list[Migration] | None) -> list[str]:
    migrations = migrations if migrations is not None else MIGRATIONS
    now = now or clock.now()
    migrator = SchemaMigrator.from_database(db)
    _check_not_newer(db, migrations, where)
    done = applied(db)
    legacy = not done and db.table_exists("incident")
    known = done or ([migrations[0].name] if legacy else [])
    todo = [m for m in migrations if m.name not in set(known)]
    if not todo and not legacy:
        return []
    if known and path is not None:  # an existing SQLite file: keep a copy of it as it was
        backup(db, path, known[-1].split("_", 1)[0])
    with db.atomic("IMMEDIATE"):
        _ensure_table(db)
        _adopt_legacy(db, now)
    names = []
    for migration in todo:
        # The write lock is taken before looking: of two processes starting at once, the
        # second waits, then finds the step done.
        with db.atomic("IMMEDIATE"):
            if migration.name in applied(db):
                continue
            try:
                migration.apply(db, migrator)
            except Exception as exc:
                last = applied(db)
                raise SchemaError(
                    f"{where}: migration {migration.name} failed and was rolled back ({exc});"
                    f" the database is as it was after {last[-1] if last else 'its creation'}:"
                    " fix the cause (disk full? permissions?) and run the command again"
                ) from exc
            _record(db, migration.name, now)
        names.append(migration.name)
    return names
