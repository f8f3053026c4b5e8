"""Replies answered 250 first and applied after: the `accepted` table and its applier thread.

Under a burst of replies, the SMTP answer is what senders wait for, and parsing a reply,
checking what it may do and writing its timeline cost twice the SMTP dialogue itself. So
a reply whose answer is already certain (a person of contacts.yaml writing to an existing
incident: always 250) is stored raw in the `accepted` table by a fsynced commit, answered
250, and applied afterwards by one thread, oldest first, each in a savepoint that also
deletes its row. A reply is so applied exactly once, across crashes too: a restart applies
what is left. Everything else (strangers, participants outside contacts.yaml, declarations,
drafts) is still applied before its answer, which depends on it.

The thread gives way to the SMTP side: it applies while no reply has arrived for QUIET
seconds, or once the oldest waiting reply is MAX_DELAY old. Past MAX_BACKLOG waiting
replies, new ones are applied before their answer again, so the backlog stays bounded.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import Any

from peewee import OperationalError

from . import clock
from .models import Accepted, InMessage

log = logging.getLogger(__name__)


class Backlog:
    """The replies accepted and not yet applied, and the thread that applies them."""

    QUIET = 0.05  # seconds without a new reply: the SMTP side is idle, apply now
    MAX_DELAY = 2.0  # seconds: a waiting reply is applied by then even during a burst
    MAX_BACKLOG = 5000  # replies waiting: past this, new ones are applied before their 250
    BATCH = 16  # replies per transaction: short, so an accept never waits long for the lock
    DRAIN = 60.0  # seconds `close` spends applying what is left (the rest waits for a restart)

    def __init__(self, db: Any, group: Any, apply: Callable[[Accepted, Any], bool],
                 parse: Callable[[Accepted], Any], on_queued: Callable[[], Any] | None = None
                 ) -> None:
        self.db = db
        meta, p = Accepted._meta, db.param
        self._insert = (f"INSERT INTO {meta.table_name} (incident_id, received_at, mail_from, "
                        f"{Accepted.content.column_name}) VALUES ({p}, {p}, {p}, {p})")
        self.group = group  # the handler's GroupCommit: applying shares its COMMITs
        self._apply, self._parse, self.on_queued = apply, parse, on_queued
        self._cond = threading.Condition()
        left = Accepted.select().count()  # from before a crash or a stop: applied at once
        start = clock.monotonic() - self.MAX_DELAY
        self._arrivals: deque[float] = deque([start] * left)  # monotonic, oldest first
        self._last_arrival = float("-inf")
        self._stopping = False
        self._idle = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mailflow-apply", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        """Replies accepted and not applied yet (as this process counts them)."""
        return len(self._arrivals)

    def full(self) -> bool:
        """Too many waiting: the next reply is applied before its answer."""
        return len(self._arrivals) >= self.MAX_BACKLOG

    def store(self, incident_id: int, received_at: datetime, mail_from: str,
              raw: bytes) -> None:
        """Inside the caller's write transaction: keep the reply to apply it later."""
        # A fixed SQL text: peewee building this INSERT cost a fifth of a reply's accept.
        self.db.execute_sql(self._insert, (incident_id,
                                           Accepted.received_at.db_value(received_at),
                                           mail_from, Accepted.content.db_value(raw)))

    def stored(self) -> None:
        """After the COMMIT that stored a reply: count it and wake the applier."""
        with self._cond:
            self._last_arrival = clock.monotonic()
            self._arrivals.append(self._last_arrival)
            self._idle.clear()
            self._cond.notify()

    def wait_applied(self, timeout: float = 30.0) -> bool:
        """Block until nothing waits (tests and tools); False on timeout."""
        with self._cond:
            self._cond.notify()
            if not self._arrivals:
                return True
        return self._idle.wait(timeout)

    def close(self) -> None:
        """Apply what waits (up to DRAIN seconds), then stop the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join()

    # --- the applier thread ---------------------------------------------------------------

    def _run(self) -> None:
        deadline = None
        try:
            while True:
                with self._cond:
                    while not self._stopping and not self._due():
                        self._cond.wait(self._pause())
                    if self._stopping and deadline is None:
                        deadline = clock.monotonic() + self.DRAIN
                if deadline is not None and clock.monotonic() > deadline:
                    if self._arrivals:
                        log.warning("stopping with %d accepted repl(ies) not applied yet: "
                                    "they are applied at the next start", len(self._arrivals))
                    return
                applied = self._apply_batch()
                if applied == 0:
                    with self._cond:
                        self._arrivals.clear()  # the table is empty, whatever was counted
                        self._idle.set()
                        if self._stopping:
                            return
                elif applied < 0:  # the database refused: wait a little, then again
                    with self._cond:
                        self._cond.wait(1.0)
        finally:
            self._idle.set()
            if not self.db.is_closed():
                self.db.close()  # this thread's own connection

    def _due(self) -> bool:
        if not self._arrivals:  # nothing counted: look once more unless known to be empty
            return not self._idle.is_set()
        at = clock.monotonic()
        return (at - self._last_arrival >= self.QUIET
                or at - self._arrivals[0] >= self.MAX_DELAY)

    def _pause(self) -> float | None:
        if not self._arrivals:
            return None  # until a reply is stored (or close)
        at = clock.monotonic()
        quiet = self.QUIET - (at - self._last_arrival)
        late = self.MAX_DELAY - (at - self._arrivals[0])
        return max(0.001, min(quiet, late))

    def _apply_batch(self) -> int:
        """Apply the oldest waiting replies in one transaction: how many (0: none, -1: failed)."""
        try:
            rows = list(Accepted.select().order_by(Accepted.id).limit(self.BATCH))
            if not rows:
                return 0
            # Parsed before the write lock is taken: the lock is held for the SQL alone.
            parsed = [(row, self._parse(row)) for row in rows]
            queued = self.group.run(lambda: self._apply_all(parsed), None)
        except OperationalError as exc:
            log.warning("accepted replies not applied yet (database: %s); trying again", exc)
            return -1
        with self._cond:
            for _ in range(min(len(rows), len(self._arrivals))):
                self._arrivals.popleft()
        if queued and self.on_queued is not None:
            self.on_queued()
        return len(rows)

    def _apply_all(self, parsed: list[tuple[Accepted, Any]]) -> bool:
        queued = False
        for row, reply in parsed:
            try:
                with self.db.atomic():  # a savepoint: the effect and the row's deletion
                    queued |= self._apply(row, reply)
                    Accepted.delete().where(Accepted.id == row.id).execute()
            except OperationalError:
                raise  # the database, not the reply: the whole batch is tried again
            except Exception:
                # A reply that breaks the code must not block the ones after it: it is kept
                # as a stored message, the traceback says why.
                log.exception("accepted reply from %s (row %d) could not be applied; kept "
                              "as a stored message", row.mail_from or "<>", row.id)
                with self.db.atomic():
                    InMessage.create(incident=None, received_at=row.received_at,
                                     mail_from=row.mail_from, content=row.content,
                                     outcome="failed")
                    Accepted.delete().where(Accepted.id == row.id).execute()
        return queued
