"""peewee models on the database passed in (a SQLite file or a PostgreSQL URL): incidents,
timeline, recipients, outbox, due work."""

from __future__ import annotations

import contextlib
import json
import os
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

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
    OperationalError,
    PostgresqlDatabase,
    SqliteDatabase,
    TextField,
)

from .clock import as_utc
from .errors import MailflowError
from .migrations import display_url, upgrade

URL_SCHEMES = ("postgresql://", "postgres://")


class DatabaseUnavailable(MailflowError):
    """The database server cannot be reached (down, failing over, or refused us)."""


class UTCDateTimeField(DateTimeField):
    """Stores naive UTC, returns aware UTC, so comparisons with `now` never mix kinds."""

    def db_value(self, value: Any) -> Any:
        if isinstance(value, datetime):
            value = as_utc(value).replace(tzinfo=None)
        return super().db_value(value)

    def python_value(self, value: Any) -> Any:
        value = super().python_value(value)
        return as_utc(value) if isinstance(value, datetime) else value


class JSONField(TextField):
    """A JSON document in a TEXT column."""

    def db_value(self, value: Any) -> Any:
        return None if value is None else json.dumps(value, sort_keys=True)

    def python_value(self, value: Any) -> Any:
        return None if value is None else json.loads(value)


class Status(StrEnum):
    """Where an incident is in its life. Stored as its value; compares equal to it."""

    DRAFT = "draft"  # opened by an alert, waiting for the on-call to declare or dismiss
    DISMISSED = "dismissed"  # a draft the on-call dismissed: nothing was sent
    OPEN = "open"  # declared: updates due, escalations running
    FOLLOW_UP = "follow-up"  # solved with a workaround; the real fix is still pending
    RESOLVED = "resolved"  # solved for good


LIVE = (Status.OPEN, Status.DRAFT, Status.FOLLOW_UP)  # the daemon still has work for these


class EntryKind(StrEnum):
    """What a timeline entry records. `log` refuses any other kind (a typo is a bug)."""

    DECLARED = "declared"
    UPDATE = "update"  # posted text, with any changes made in the same action
    CHANGE = "change"  # fields changed without text
    HANDOVER = "handover"
    RESOLVED = "resolved"
    REOPENED = "reopened"
    CLOSED = "closed"  # the follow-up was done
    DISMISSED = "dismissed"
    NOTE = "note"  # internal: not carried by emails
    EMAIL = "email"  # an email was queued
    REMINDER = "reminder"
    HANDOVER_REMINDER = "handover-reminder"
    ESCALATION = "escalation"
    SCHEDULE = "schedule"
    POSTMORTEM = "postmortem"
    ALERT = "alert"
    WARNING = "warning"
    FAILURE = "failure"  # a delivery failed
    BOUNCE = "bounce"
    AUTO_REPLY = "auto-reply"
    REFUSED = "refused"  # a reply that was not posted, and why
    HELD = "held"  # a command-looking line held for a look-alike sender
    EMPTY = "empty"  # a reply with no new text
    SEND_NOW = "send-now"
    STRANGERS_TOLD = "strangers-told"
    REMOVED = "removed"  # a person taken off the incident
    RECIPIENT = "recipient"  # someone added to the emails: recorded, not broadcast
    PUBLISHED = "published"  # an update put out on the external status page


class BaseModel(Model):
    class Meta:
        database = None  # bound by open_database(); models never own a global connection


class Incident(BaseModel):
    """One incident and its current state; `ref` is what people type (INC-42)."""

    id = AutoField()
    service = CharField()
    service_title = CharField()
    subject = CharField()  # fixed at declare time: Gmail threads by subject
    severity = CharField()
    impact = CharField()  # "outage" | "degraded"
    summary = TextField()
    impacted = JSONField(default=list)  # extra addresses named at declare time or added later
    eta = TextField(default="")
    started = TextField(default="")
    next_steps = TextField(default="")
    lead = CharField(null=True)
    lead_since = UTCDateTimeField(null=True)
    communicator = CharField(null=True)
    scribe = CharField(null=True)
    status = CharField(default=Status.OPEN.value)  # a Status
    declared_at = UTCDateTimeField()
    resolved_at = UTCDateTimeField(null=True)
    closed_at = UTCDateTimeField(null=True)
    next_comm_at = UTCDateTimeField(null=True)
    last_comm_at = UTCDateTimeField(null=True)
    # the facts as last communicated: what "new" is measured against
    last_sent = JSONField(null=True)
    resolution = TextField(default="")
    follow_up = TextField(default="")
    postmortem_done = BooleanField(default=False)

    @property
    def ref(self) -> str:
        """The short reference people use: INC-<id>."""
        return f"INC-{self.id}"

    @property
    def is_open(self) -> bool:
        """True until the incident is resolved (with or without follow-up)."""
        return self.status == Status.OPEN


class Entry(BaseModel):
    """A timeline entry. `communicated_at` is NULL until an email has carried it."""

    id = AutoField()
    incident = ForeignKeyField(Incident, backref="entries", on_delete="CASCADE")
    at = UTCDateTimeField(index=True)
    kind = CharField()  # declared update command change email reminder escalation handover ...
    author = CharField(default="")
    text = TextField(default="")
    data = JSONField(null=True)
    communicated_at = UTCDateTimeField(null=True)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view used by `show --json`."""
        return {"at": self.at.isoformat().replace("+00:00", "Z"), "kind": self.kind,
                "author": self.author, "text": self.text}


class Recipient(BaseModel):
    """Someone who receives this incident's emails, and the root of their thread."""

    id = AutoField()
    incident = ForeignKeyField(Incident, backref="recipients", on_delete="CASCADE")
    email = CharField()  # lowercased bare address
    name = CharField(default="")
    reason = CharField(default="")
    added_at = UTCDateTimeField()
    first_message_id = CharField(null=True)
    status = CharField(default="active")  # active | bounced | failed
    last_error = TextField(default="")
    # The lists that brought them in, comma-separated; "*" when named directly (a role,
    # impacted, an escalation): what they receive follows from these lists' audiences.
    via = TextField(default="")

    class Meta:
        indexes = ((("incident", "email"), True),)


class OutMessage(BaseModel):
    """The durable outbox: a rendered email waits here until the relay took it."""

    id = AutoField()
    incident = ForeignKeyField(Incident, null=True, backref="messages", on_delete="CASCADE")
    kind = CharField()
    recipient = CharField()
    envelope_from = CharField()
    message_id = CharField()
    content = BlobField(column_name="raw")  # not `raw`: that is peewee's Model.raw()
    created_at = UTCDateTimeField()
    next_attempt_at = UTCDateTimeField()
    claimed_until = UTCDateTimeField(null=True)  # a sender holds it; expires if that sender died
    claimed_by = IntegerField(null=True)  # the sender's PID: a dead sender's claim is void at once
    attempts = IntegerField(default=0)
    status = CharField(default="queued")  # queued | sending | sent | failed | expired
    expires_at = UTCDateTimeField(null=True)  # a reminder is worthless after its deadline
    sent_at = UTCDateTimeField(null=True)
    last_error = TextField(default="")
    priority = IntegerField(default=0)  # higher first: mail for the lead before a fan-out
    failure_told_at = UTCDateTimeField(null=True)  # its failure is in a notice to the lead

    class Meta:
        indexes = (
            (("status", "next_attempt_at"), False),
            # "is an earlier message to this recipient still waiting?" for every claim
            (("recipient", "status", "id"), False),
        )


class Due(BaseModel):
    """A piece of scheduled work (reminder, mark, escalation...) that must run exactly once."""

    id = AutoField()
    incident = ForeignKeyField(Incident, backref="due", on_delete="CASCADE")
    kind = CharField()
    key = CharField()  # what makes it unique for its incident: the mark time, the threshold...
    due_at = UTCDateTimeField()
    done_at = UTCDateTimeField(null=True)
    outcome = CharField(default="")  # done | skipped | cancelled
    incident_id: int  # peewee's column attribute for the foreign key, declared for mypy

    class Meta:
        indexes = (
            (("incident", "kind", "key"), True),
            (("done_at", "due_at"), False),
        )


class InMessage(BaseModel):
    """Every reply accepted with 250 is stored raw in the same transaction as its effect."""

    id = AutoField()
    incident = ForeignKeyField(Incident, null=True, backref="replies", on_delete="SET NULL")
    received_at = UTCDateTimeField()
    mail_from = CharField(default="")
    sender = CharField(default="")
    message_id = CharField(default="")
    content = BlobField(column_name="raw")  # not `raw`: that is peewee's Model.raw()
    outcome = CharField(default="")  # posted | command | auto-reply | bounce | empty | note
    digest = CharField(default="", index=True)  # a declaration's sender + body (deduplication)

    class Meta:
        # The duplicate check of every reply: without it each reply walks all earlier ones.
        indexes = ((("incident", "message_id"), False),)


class Accepted(BaseModel):
    """A reply answered 250 but not applied yet; deleted in the transaction that applies it."""

    id = AutoField()
    incident_id = IntegerField()  # not a foreign key: a reply to a deleted incident is dropped
    received_at = UTCDateTimeField()
    mail_from = CharField(default="")
    content = BlobField(column_name="raw")


class Alert(BaseModel):
    """An alert group from a monitoring system, and the draft (or incident) it opened."""

    id = AutoField()
    key = CharField(index=True)  # groupKey, fingerprint or `mailflow alert --key`
    source = CharField()  # alertmanager | grafana | cli
    incident = ForeignKeyField(Incident, null=True, backref="alerts", on_delete="CASCADE")
    status = CharField(default="firing")  # firing | resolved
    summary = TextField(default="")
    labels = JSONField(default=dict)
    first_at = UTCDateTimeField()
    last_at = UTCDateTimeField()
    count = IntegerField(default=1)


class StatusUpdate(BaseModel):
    """One communication as the status page shows it; external once published."""

    id = AutoField()
    incident = ForeignKeyField(Incident, backref="status_updates", on_delete="CASCADE")
    at = UTCDateTimeField()
    kind = CharField()  # start | update | solved
    status = CharField()  # Statuspage's: investigating | identified | monitoring | resolved
    text = TextField()  # what the internal page shows
    public_text = TextField(null=True)  # what the external page shows, once published
    published_at = UTCDateTimeField(null=True)
    published_by = CharField(default="")


class Subscriber(BaseModel):
    """Someone who asked for a service's external updates by email (double opt-in)."""

    id = AutoField()
    email = CharField()
    service = CharField()
    status = CharField(default="pending")  # pending | active | unsubscribed
    requested_at = UTCDateTimeField()
    confirmed_at = UTCDateTimeField(null=True)
    unsubscribed_at = UTCDateTimeField(null=True)

    class Meta:
        indexes = ((("email", "service"), True),)


class ImapMessage(BaseModel):
    """One message read from an IMAP mailbox and what became of it (applied exactly once)."""

    id = AutoField()
    mailbox = CharField()  # user@host/folder
    uidvalidity = IntegerField()
    uid = IntegerField()
    message_id = CharField()  # Message-ID, or sha256: of the message when it has none
    outcome = CharField()  # posted | refused | ignored: the folder it is moved to
    at = UTCDateTimeField()

    class Meta:
        indexes = ((("mailbox", "uidvalidity", "uid"), True), (("mailbox", "message_id"), False))


class ImapState(BaseModel):
    """Whether the IMAP mailbox can be read, and since when not (`mailflow show` says it)."""

    mailbox = CharField(primary_key=True)
    down_since = UTCDateTimeField(null=True)
    error = TextField(default="")
    checked_at = UTCDateTimeField(null=True)


class Instance(BaseModel):
    """A daemon working on this database, and its last heartbeat."""

    id = AutoField()
    host = CharField()
    pid = IntegerField()
    version = CharField()
    started_at = UTCDateTimeField()
    heartbeat_at = UTCDateTimeField()
    scheduler_since = UTCDateTimeField(null=True)  # holds the scheduler's lock since then


MODELS = [Incident, Entry, Recipient, OutMessage, Due, InMessage, Alert, StatusUpdate,
          Subscriber, ImapMessage, ImapState, Instance, Accepted]


def is_url(database: Path | str) -> bool:
    """Whether `database` names a PostgreSQL server (a URL) rather than a SQLite file."""
    return isinstance(database, str) and database.startswith(URL_SCHEMES)


def is_postgres(db: Database) -> bool:
    """Whether this open database is PostgreSQL (claims and locks differ from SQLite's)."""
    return isinstance(db, PostgresqlDatabase)


def _postgres_class() -> type:
    """peewee's psycopg 3 database class with our two changes, built on first use: importing
    playhouse's PostgreSQL module imports psycopg (and asyncio), which a SQLite database
    must not pay for."""
    global _POSTGRES
    if _POSTGRES is None:
        from playhouse.postgres_ext import Psycopg3Database

        class PostgresDatabase(Psycopg3Database):
            """peewee's psycopg 3 database, taking SQLite's lock types where callers pass them.

            `atomic("IMMEDIATE")` takes SQLite's write lock at BEGIN; PostgreSQL locks the
            rows a transaction writes instead, so the lock type is dropped (READ COMMITTED).
            """

            def atomic(self, *args: Any, **kwargs: Any) -> Any:
                """A transaction (or savepoint); SQLite lock types are ignored."""
                args = tuple(a for a in args
                             if a not in ("DEFERRED", "IMMEDIATE", "EXCLUSIVE"))
                self._drop_if_broken()
                return super().atomic(*args, **kwargs)

            def execute_sql(self, sql: str, params: Any = None, *args: Any,
                            **kwargs: Any) -> Any:
                """Run a statement; a connection the server dropped (restart, failover)
                is replaced."""
                self._drop_if_broken()
                return super().execute_sql(sql, params, *args, **kwargs)

            def _drop_if_broken(self) -> None:
                # Only between transactions: inside one, the error must reach the caller (the
                # reply gets a 4xx, the tick is retried), never be replayed on a new connection.
                conn = self._state.conn
                if (conn is not None and (conn.broken or conn.closed)
                        and not self.in_transaction()):
                    with contextlib.suppress(Exception):
                        conn.close()
                    self._state.reset()  # the next statement connects again (autoconnect)

        _POSTGRES = PostgresDatabase
    return _POSTGRES


_POSTGRES: type | None = None


def wait_at_most(db: Database, seconds: float) -> None:
    """How long this connection's next statements wait for another writer's lock."""
    ms = max(1, int(seconds * 1000))
    if is_postgres(db):
        db.execute_sql(f"SET lock_timeout = {ms}")
    else:
        db.execute_sql(f"PRAGMA busy_timeout = {ms}")


def _open_postgres(url: str) -> Database:
    """Connect to the server named by the URL (libpq finds the password: URL, PGPASSFILE,
    PGPASSWORD), bind the models and migrate under the migration lock."""
    try:
        import psycopg
    except ImportError:
        raise DatabaseUnavailable(
            f"{display_url(url)}: PostgreSQL needs the psycopg driver: install mailflow with "
            "its postgresql extra (pip install 'mailflow[postgresql]')") from None

    scheme, rest = url.split("://", 1)
    db = _postgres_class()(f"postgresql://{rest}" if scheme == "postgres" else url,
                          autoconnect=True)
    db.bind(MODELS, bind_refs=False, bind_backrefs=False)
    try:
        db.connect(reuse_if_open=True)
    except (psycopg.Error, OperationalError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatabaseUnavailable(
            f"{display_url(url)}: cannot connect to PostgreSQL ({reason}): check that the"
            " server runs and the URL, PGPASSFILE or PGPASSWORD are right") from None
    try:
        upgrade(db, url)
    except BaseException:
        db.close()
        raise
    return db


def open_database(path: Path | str) -> Database:
    """Open the database (a PostgreSQL URL, or a SQLite file created 0600), bind the
    models to it, and migrate."""
    if is_url(path):
        return _open_postgres(str(path))
    path = Path(path)
    if str(path) != ":memory:":
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            # Created 0600 before SQLite touches it: the file holds people's addresses and replies.
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    db = SqliteDatabase(
        str(path),
        pragmas={
            "journal_mode": "wal",  # readers (CLI) never block the daemon's writer
            # FULL: in WAL mode, NORMAL may lose the last commits on power loss; a reply
            # acknowledged with 250 must survive that, so every commit is fsynced.
            "synchronous": "full",
            "busy_timeout": 10000,
            "foreign_keys": 1,
        },
        timeout=10,
        check_same_thread=False,
    )
    db.bind(MODELS, bind_refs=False, bind_backrefs=False)
    db.connect(reuse_if_open=True)
    try:
        upgrade(db, path)
    except BaseException:
        db.close()
        raise
    return db
