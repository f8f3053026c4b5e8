"""Several daemons on one database: who is there (heartbeats) and who runs the scheduler.

Every daemon accepts replies and sends the outbox (rows are claimed with SKIP LOCKED);
the scheduler's tick runs only on the one holding a session-level advisory lock on
PostgreSQL. The lock lives as long as its holder's connection: if the holder dies or is
cut off, the server ends its session (TCP keepalives at a third of `[ha] takeover`) and
the next instance to try takes the lock at its next tick. A holder that cannot confirm
its lock stops ticking at once, so two schedulers never run together. On SQLite there is
one daemon, and it always schedules.

At each heartbeat an instance also checks the schema: once a newer mailflow has migrated
the database, an older instance stops rather than write the old shape.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from . import __version__
from .migrations import check_not_newer, display_url
from .models import Due, Instance, OutMessage, is_postgres

if TYPE_CHECKING:
    from .app import Mailflow

log = logging.getLogger(__name__)

# pg_advisory_lock key of the scheduler (any fixed 64-bit number; "mfsched" in ASCII).
SCHEDULER_LOCK = 0x6D66736368656400


class Membership:
    """This daemon's row in the instance table, its heartbeat, and the scheduler lock."""

    def __init__(self, app: Mailflow, now: datetime) -> None:
        self.app = app
        self.takeover = app.config.ha.takeover
        self.postgres = is_postgres(app.db)
        self.where = display_url(str(app.config.database))
        self._lock: Any = None  # the connection that holds (or tries for) the lock
        self.holding = False
        self._last_beat: datetime | None = None
        self.id = Instance.create(host=socket.gethostname(), pid=os.getpid(),
                                  version=__version__, started_at=now, heartbeat_at=now).id

    @property
    def beat_every(self) -> timedelta:
        """How often the heartbeat is written: a third of the takeover time."""
        return self.takeover / 3

    def tick(self, now: datetime) -> bool:
        """Heartbeat when due, check the schema, and say whether this instance schedules.

        Raises SchemaError when a newer mailflow has migrated the database.
        """
        if self._last_beat is None or now - self._last_beat >= self.beat_every:
            self.beat(now)
        was = self.holding
        self.holding = self._hold() if self.postgres else True
        if self.holding != was:
            # Said at once, not at the next heartbeat: `mailflow status` names the holder.
            # The lock is exclusive, so any other row that still claims it is out of date.
            if self.holding:
                Instance.update(scheduler_since=None).where(Instance.id != self.id).execute()
            Instance.update(scheduler_since=now if self.holding else None).where(
                Instance.id == self.id).execute()
        return self.holding

    def beat(self, now: datetime) -> None:
        """Write the heartbeat (and whether this instance schedules); forget silent ones."""
        check_not_newer(self.app.db, self.where)
        since = Instance.get_or_none(Instance.id == self.id)
        if since is None:  # thought gone after a long pause: come back
            self.id = Instance.create(host=socket.gethostname(), pid=os.getpid(),
                                      version=__version__, started_at=now,
                                      heartbeat_at=now).id
            since = Instance.get_by_id(self.id)
        scheduler_since = (since.scheduler_since or now) if self.holding else None
        Instance.update(heartbeat_at=now, scheduler_since=scheduler_since).where(
            Instance.id == self.id).execute()
        # An instance that was killed cannot say goodbye: it leaves once it has been silent
        # for the takeover time.
        Instance.delete().where(Instance.heartbeat_at < now - self.takeover).execute()
        self._last_beat = now

    def _hold(self) -> bool:
        """Take or confirm the scheduler lock on its own connection; False if not ours."""
        import psycopg

        try:
            if self._lock is None:
                self._lock = self._connect()
            if self.holding:
                self._lock.execute("SELECT 1")  # the session, and so the lock, still lives
                return True
            got = bool(self._lock.execute("SELECT pg_try_advisory_lock(%s)",
                                          (SCHEDULER_LOCK,)).fetchone()[0])
            if got:
                log.info("this instance now runs the scheduler")
            return got
        except psycopg.Error as exc:
            if self.holding:
                log.warning("lost the scheduler lock (%s); another instance takes over",
                            str(exc).strip().splitlines()[0] if str(exc).strip() else exc)
            self._drop()
            return False

    def _connect(self) -> Any:
        import psycopg

        seconds = max(1, int(self.takeover.total_seconds() / 3))
        # Keepalives on both ends: the server ends a vanished holder's session (and frees
        # the lock) within the takeover time; this side notices a dead server as fast.
        conn = psycopg.connect(str(self.app.config.database), autocommit=True,
                               connect_timeout=seconds, keepalives=1,
                               keepalives_idle=seconds, keepalives_interval=1,
                               keepalives_count=max(1, seconds // 2))
        conn.execute(f"SET tcp_keepalives_idle = {seconds}")
        conn.execute("SET tcp_keepalives_interval = 1")
        conn.execute(f"SET tcp_keepalives_count = {max(1, seconds // 2)}")
        conn.execute(f"SET statement_timeout = {seconds * 1000}")
        return conn

    def _drop(self) -> None:
        if self._lock is not None:
            try:
                self._lock.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close
                pass
        self._lock = None
        self.holding = False

    def leave(self) -> None:
        """A clean stop: give up the lock and take this instance off the list at once."""
        self._drop()
        try:
            Instance.delete().where(Instance.id == self.id).execute()
        except Exception as exc:  # noqa: BLE001 - the database may be the reason we stop
            log.warning("could not remove this instance from the list: %s", exc)


@dataclass
class Status:
    """What `mailflow status` shows."""

    instances: list[dict[str, Any]]
    scheduler: dict[str, Any] | None
    queue: dict[str, int]
    due: int


def status(app: Mailflow, now: datetime) -> Status:
    """The instances alive at `now`, the scheduler's holder, and the outbox and due work."""
    fresh = now - app.config.ha.takeover
    rows = list(Instance.select().where(Instance.heartbeat_at >= fresh)
                .order_by(Instance.host, Instance.pid))
    instances = [{"host": r.host, "pid": r.pid, "version": r.version,
                  "started_at": _iso(r.started_at), "heartbeat_at": _iso(r.heartbeat_at),
                  "heartbeat_age": max(0, int((now - r.heartbeat_at).total_seconds())),
                  "scheduler": r.scheduler_since is not None} for r in rows]
    holder = next((i for i in instances if i["scheduler"]), None)
    queue = {s: OutMessage.select().where(OutMessage.status == s).count()
             for s in ("queued", "sending")}
    due = Due.select().where(Due.done_at.is_null() & (Due.due_at <= now)).count()
    return Status(instances, holder, queue, due)


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")
