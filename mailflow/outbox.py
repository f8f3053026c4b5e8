"""The durable outbox: rendered mail waits in SQLite until a transport has taken it.

A message is claimed (status `sending`, with a lease) before it is handed to the relay and
marked `sent` right after, one commit per message. A crash between the two leaves it
`sending`; when the lease expires it is sent again: at most one duplicate per message in
flight at the moment of a crash, and nothing is ever lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import ssl
import logging
import mailbox
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol

import aiosmtplib
from peewee import SqliteDatabase, fn

from .clock import format_duration
from .config import Outbound
from .models import Entry, OutMessage, Recipient

log = logging.getLogger(__name__)

# RFC 5321 §4.5.4.1: retry quickly at first, then no faster than every 30 minutes.
BACKOFF = (timedelta(minutes=1), timedelta(minutes=5), timedelta(minutes=15), timedelta(minutes=30))
LEASE = timedelta(minutes=5)
PROBE = timedelta(minutes=1)  # while the relay cannot be reached at all
BATCH = 200  # claimed at once; small enough to go out well within a lease


class TemporaryFailure(Exception):
    """The relay said 4xx or could not be reached: try again later."""


class RelayDown(TemporaryFailure):
    """The relay cannot be reached at all: every message waiting for it is deferred."""


class PermanentFailure(Exception):
    """The relay said 5xx for this recipient: do not retry."""


class Transport(Protocol):
    """Anything that can hand one message to one recipient (SMTP relay, Maildir, a test fake)."""

    async def send(self, envelope_from: str, recipient: str, raw: bytes) -> None: ...

    async def close(self) -> None: ...


@dataclass
class MaildirTransport:
    """Delivers into a local Maildir (0700), for a new user with no relay configured."""

    path: Path

    def __post_init__(self) -> None:
        old = os.umask(0o077)
        try:
            self._box = mailbox.Maildir(str(self.path), create=True)
        finally:
            os.umask(old)

    async def send(self, envelope_from: str, recipient: str, raw: bytes) -> None:
        """Write the message, with the envelope as Return-Path / Delivered-To headers."""
        head = f"Return-Path: <{envelope_from}>\r\nDelivered-To: {recipient}\r\n".encode()
        old = os.umask(0o077)
        try:
            self._box.add(head + raw)
        except OSError as exc:
            raise TemporaryFailure(f"cannot write to Maildir {self.path}: {exc}") from exc
        finally:
            os.umask(old)

    async def close(self) -> None:
        """Nothing to close."""


class SMTPTransport:
    """One aiosmtplib connection, opened on first use and reused for every message."""

    def __init__(self, settings: Outbound) -> None:
        self.settings = settings
        self._smtp: aiosmtplib.SMTP | None = None

    async def _connect(self) -> aiosmtplib.SMTP:
        s = self.settings
        context = ssl.create_default_context(cafile=str(s.cafile) if s.cafile else None)
        smtp = aiosmtplib.SMTP(
            hostname=s.host, port=s.port, timeout=s.timeout,
            start_tls=s.starttls if s.port != 465 else False,
            use_tls=s.port == 465, tls_context=context,
        )
        try:
            await smtp.connect()
            if s.username:
                await smtp.login(s.username, s.password)
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise RelayDown(f"relay {s.host}:{s.port} refused login: {exc}") from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise RelayDown(f"relay {s.host}:{s.port} unreachable: {exc}") from exc
        return smtp

    async def send(self, envelope_from: str, recipient: str, raw: bytes) -> None:
        """Send over the shared connection; reconnect once if the relay dropped it."""
        for attempt in (1, 2):
            if self._smtp is None or not self._smtp.is_connected:
                self._smtp = await self._connect()
            try:
                errors, _ = await self._smtp.sendmail(envelope_from, [recipient], raw)
                return
            except aiosmtplib.SMTPRecipientsRefused as exc:
                codes = [r.code for r in exc.recipients]
                text = "; ".join(f"{r.code} {r.message}" for r in exc.recipients)
                await self._reset()
                if codes and all(c >= 500 for c in codes):
                    raise PermanentFailure(text) from exc
                raise TemporaryFailure(text) from exc
            except aiosmtplib.SMTPResponseException as exc:
                await self._reset()
                if exc.code >= 500:
                    raise PermanentFailure(f"{exc.code} {exc.message}") from exc
                raise TemporaryFailure(f"{exc.code} {exc.message}") from exc
            except (aiosmtplib.SMTPServerDisconnected, ConnectionError) as exc:
                self._smtp = None
                if attempt == 2:
                    raise TemporaryFailure(f"relay disconnected: {exc}") from exc
            except (aiosmtplib.SMTPException, OSError) as exc:
                self._smtp = None
                raise TemporaryFailure(f"relay error: {exc}") from exc

    async def _reset(self) -> None:
        with contextlib.suppress(aiosmtplib.SMTPException, OSError):
            if self._smtp is not None and self._smtp.is_connected:
                await self._smtp.rset()

    async def close(self) -> None:
        """QUIT politely; a relay that already went away is fine."""
        if self._smtp is not None:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                await self._smtp.quit()
            self._smtp = None


def make_transport(settings: Outbound, maildir: Path) -> Transport:
    """SMTP when a relay host is configured, else the Maildir."""
    return SMTPTransport(settings) if settings.host else MaildirTransport(maildir)


@dataclass
class Report:
    """What one delivery run did."""

    sent: int = 0
    retrying: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


def _sql_time(value: datetime) -> str:
    """A time as peewee stores it (naive UTC, ISO with a space), for raw statements."""
    return value.astimezone(timezone.utc).replace(tzinfo=None).isoformat(sep=" ")


def _alive(pid: int) -> bool:
    """Whether a process still exists (a crashed sender's claims can be taken over at once)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Outbox:
    """Queue, claim and deliver outgoing mail."""

    def __init__(self, db: SqliteDatabase, retry_for: timedelta = timedelta(days=1)) -> None:
        self.db = db
        self.retry_for = retry_for
        self._marks: sqlite3.Connection | None = None
        self.queued = 0  # messages queued by this process: the daemon wakes its sender on a change
        # Called inside the failure's transaction: the app tells the incident lead.
        self.on_failure: Callable[[OutMessage, str, datetime], None] | None = None

    def _mark_sent(self, msg: OutMessage, now: datetime) -> None:
        """Record one delivery, on a connection of its own that commits without fsync.

        WAL + synchronous=NORMAL survives a crash of the process; only a power cut can
        lose the mark, and then the cost is one more copy of that email. An fsync per
        message (FULL, as replies need) would cost more than building the message.
        """
        if self._marks is None:
            self._marks = sqlite3.connect(self.db.database, isolation_level=None,
                                          check_same_thread=False, timeout=10)
            self._marks.execute("PRAGMA synchronous = NORMAL")
            self._marks.execute("PRAGMA busy_timeout = 10000")
        self._marks.execute(
            "UPDATE outmessage SET status = 'sent', sent_at = ?, claimed_until = NULL, "
            "attempts = attempts + 1 WHERE id = ?",
            (_sql_time(now), msg.id))

    def close(self) -> None:
        """Close the bookkeeping connection."""
        if self._marks is not None:
            self._marks.close()
            self._marks = None

    def enqueue(self, incident_id: int | None, kind: str, envelope_from: str,
                messages: Sequence[tuple[str, str, bytes]], now: datetime,
                expires_at: datetime | None = None) -> None:
        """Queue (recipient, Message-ID, raw bytes) triples; the caller's transaction commits.

        One executemany: peewee's per-row query building cost more than the SQLite insert.
        """
        at = _sql_time(now)
        expires = _sql_time(expires_at) if expires_at else None
        self.queued += len(messages)
        self.db.cursor().executemany(
            "INSERT INTO outmessage (incident_id, kind, recipient, envelope_from, message_id, "
            "raw, created_at, next_attempt_at, expires_at, attempts, status, last_error) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 'queued', '')",
            [(incident_id, kind, rcpt, envelope_from, mid, raw, at, at, expires)
             for rcpt, mid, raw in messages])

    def pending(self) -> int:
        """How many messages are not yet sent or failed."""
        return OutMessage.select().where(OutMessage.status.in_(("queued", "sending"))).count()

    def claim(self, now: datetime, limit: int = 500) -> list[OutMessage]:
        """Take due messages (oldest first, one per recipient at a time) for this sender."""
        earlier = OutMessage.alias()
        blocked = earlier.select(earlier.id).where(
            (earlier.recipient == OutMessage.recipient)
            & (earlier.id < OutMessage.id)
            & (earlier.status.in_(("queued", "sending")))
        )
        with self.db.atomic("IMMEDIATE"):
            dead = [pid for pid in self._claimants() if not _alive(pid)]
            due = (
                (OutMessage.status == "queued") & (OutMessage.next_attempt_at <= now)
            ) | ((OutMessage.status == "sending") & (
                (OutMessage.claimed_until <= now) | OutMessage.claimed_by.in_(dead)))
            rows = list(
                OutMessage.select()
                .where(due & ~fn.EXISTS(blocked))
                .order_by(OutMessage.id)
                .limit(limit)
            )
            if rows:
                OutMessage.update(status="sending", claimed_until=now + LEASE,
                                  claimed_by=os.getpid()).where(
                    OutMessage.id.in_([r.id for r in rows])
                ).execute()
        return rows

    def _claimants(self) -> list[int]:
        rows = (OutMessage.select(OutMessage.claimed_by).distinct()
                .where((OutMessage.status == "sending") & OutMessage.claimed_by.is_null(False)))
        return [r.claimed_by for r in rows if r.claimed_by != os.getpid()]

    async def deliver(self, transport: Transport, now: datetime, concurrency: int = 1,
                      transports: Sequence[Transport] = (),
                      clock: Callable[[], datetime] | None = None,
                      should_stop: Callable[[], bool] | None = None) -> Report:
        """Send everything due; each worker reuses its own transport's connection.

        `clock` gives a fresh time for leases and deadlines during a long run (the daemon
        passes the real clock); by default the run is frozen at `now`. `should_stop` lets
        SIGTERM end a long run between two messages.
        """
        report = Report()
        clock = clock or (lambda: now)
        workers = [transport, *transports][: max(1, concurrency)]
        while not (should_stop and should_stop()):
            claimed_at = clock()
            batch = self.claim(claimed_at, limit=BATCH)
            if not batch:
                break
            queue: asyncio.Queue[OutMessage] = asyncio.Queue()
            for msg in batch:
                queue.put_nowait(msg)
            # Stop a little before the lease ends: past it, another sender may take the rest.
            lease_end = claimed_at + LEASE - timedelta(seconds=30)
            await asyncio.gather(*(self._worker(t, queue, clock, lease_end, report, should_stop)
                                   for t in workers))
            if clock() >= lease_end:
                break
        return report

    async def _worker(self, transport: Transport, queue: asyncio.Queue[OutMessage],
                      clock: Callable[[], datetime], lease_end: datetime, report: Report,
                      should_stop: Callable[[], bool] | None) -> None:
        while not queue.empty():
            now = clock()
            if now >= lease_end or (should_stop and should_stop()):
                return  # what is left stays claimed until the lease ends, then is re-sent
            msg = queue.get_nowait()
            if msg.expires_at is not None and now >= msg.expires_at:
                self._expired(msg, now, report)
                continue
            try:
                await transport.send(msg.envelope_from, msg.recipient, bytes(msg.content))
            except PermanentFailure as exc:
                self._failed(msg, now, str(exc), report)
            except RelayDown as exc:
                # Nobody can be reached: probe again in a minute with the whole batch, without
                # counting it as an attempt for each message (their backoff would grow for
                # nothing, and delay everything for half an hour after a short blip).
                self._retry(msg, now, str(exc), report, probe=True)
                while not queue.empty():
                    self._retry(queue.get_nowait(), now, str(exc), report, quiet=True, probe=True)
            except TemporaryFailure as exc:
                self._retry(msg, now, str(exc), report)
            except Exception as exc:  # one bad message must not stall the whole outbox
                log.exception("delivery to %s failed unexpectedly", msg.recipient)
                self._failed(msg, now, f"could not be sent: {exc!r}", report)
            else:
                try:
                    self._mark_sent(msg, now)
                except sqlite3.Error:
                    # It went out; unmarked, it will be sent again once its lease ends.
                    log.exception("could not mark the email to %s as sent", msg.recipient)
                report.sent += 1

    def _mine(self, msg: OutMessage) -> Any:
        """Write back only a claim that is still ours (another sender may have taken it)."""
        return ((OutMessage.id == msg.id) & (OutMessage.status == "sending")
                & (OutMessage.claimed_by == os.getpid()))

    def _expired(self, msg: OutMessage, now: datetime, report: Report) -> None:
        with self.db.atomic():
            OutMessage.update(status="expired", claimed_until=None,
                              last_error="not sent before its deadline").where(
                self._mine(msg)).execute()
        report.errors.append(f"{msg.kind} email to {msg.recipient} dropped: its deadline passed")
        log.warning("%s email to %s dropped: its deadline passed", msg.kind, msg.recipient)

    def _retry(self, msg: OutMessage, now: datetime, error: str, report: Report,
               quiet: bool = False, probe: bool = False) -> None:
        if now - msg.created_at >= self.retry_for:
            self._failed(msg, now, f"gave up after {format_duration(self.retry_for)}: {error}",
                         report, permanent=False)
            return
        delay = PROBE if probe else BACKOFF[min(msg.attempts, len(BACKOFF) - 1)]
        with self.db.atomic():
            OutMessage.update(status="queued", claimed_until=None,
                              attempts=msg.attempts + (0 if probe else 1),
                              next_attempt_at=now + delay, last_error=error).where(
                self._mine(msg)).execute()
        report.retrying += 1
        if not quiet:
            report.errors.append(f"{error} (retry in {format_duration(delay)})")
            log.warning("delivery to %s deferred: %s", msg.recipient, error)

    def _failed(self, msg: OutMessage, now: datetime, error: str, report: Report,
                permanent: bool = True) -> None:
        with self.db.atomic():
            OutMessage.update(status="failed", claimed_until=None, attempts=msg.attempts + 1,
                              last_error=error).where(self._mine(msg)).execute()
            if msg.incident_id is not None:
                # A 5xx (no such user) stops further mail to that address; giving up after
                # an outage does not: the next communication tries them again.
                Recipient.update(status="failed" if permanent else "active",
                                 last_error=error).where(
                    (Recipient.incident == msg.incident_id) & (Recipient.email == msg.recipient)
                ).execute()
                Entry.create(incident=msg.incident_id, at=now, kind="failure", author="mailflow",
                             text=f"{msg.kind} email to {msg.recipient} failed: {error}")
                if self.on_failure is not None:
                    self.on_failure(msg, error, now)
        report.failed += 1
        report.errors.append(f"{msg.recipient}: {error}")
        log.error("delivery to %s failed permanently: %s", msg.recipient, error)

