"""The durable outbox: rendered mail waits in SQLite until a transport has taken it.

A message is claimed (status `sending`, with a lease) before it is handed to the relay and
marked `sent` right after, one commit per message. A crash between the two leaves it
`sending`; when the lease expires it is sent again: at most one duplicate per message in
flight at the moment of a crash, and nothing is ever lost.

The bookkeeping runs on one background thread with a SQLite connection of its own (SQLite
releases the GIL), so it overlaps the relay's turn instead of adding to it: the mark of
message k commits while message k+1's MAIL FROM and RCPT TO are on the wire and is awaited
before its DATA, so the relay never holds more than one unmarked message per connection;
the next batch is claimed while the last messages of the current one go out.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import logging
import mailbox
import os
import queue
import re
import sqlite3
import ssl
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiosmtplib
from peewee import Database, PostgresqlDatabase

from .clock import format_duration
from .config import Outbound
from .models import Due, Entry, OutMessage, Recipient
from .oauth2 import OAuth2Error

log = logging.getLogger(__name__)

# RFC 5321 §4.5.4.1: retry quickly at first, then no faster than every 30 minutes.
BACKOFF = (timedelta(minutes=1), timedelta(minutes=5), timedelta(minutes=15), timedelta(minutes=30))
LEASE = timedelta(minutes=5)
PROBE = timedelta(minutes=1)  # while the relay cannot be reached at all
BATCH = 200  # claimed at once; small enough to go out well within a lease
# The next batch is claimed in the background once this few of the current one are left:
# early enough to be ready in time, late enough that its lease is not spent waiting.
PREFETCH_AT = 50
WAL_BACKSTOP = 10_000  # pages (40 MB): past this, any commit copies the WAL back itself

T = TypeVar("T")
# Awaited by a transport just before the relay can accept the message (before DATA).
BeforeData = Callable[[], Awaitable[None]]


class TemporaryFailure(Exception):
    """The relay said 4xx or could not be reached: try again later."""


class RelayDown(TemporaryFailure):
    """The relay cannot be reached at all: every message waiting for it is deferred."""


class Withheld(Exception):
    """Not sent: the sender stopped before DATA (its bookkeeping lost the database)."""


class PermanentFailure(Exception):
    """The relay said 5xx for this recipient: do not retry, and send them nothing more."""


class MessageRefused(PermanentFailure):
    """The relay refused this message (size, content, policy), not its recipient.

    The message is failed; the recipient stays active and later communications are tried.
    """


_ENHANCED = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_NO_SUCH_USER = re.compile(
    r"user unknown|unknown user|no such (user|mailbox|recipient)|mailbox (unavailable|not found)"
    r"|recipient (address )?rejected|does not exist|invalid recipient|address rejected", re.I)


def classify_refusal(code: int, message: str, stage: str) -> Exception:
    """The failure an SMTP reply stands for: temporary, this recipient, or this message.

    `stage` is the command that was refused ("MAIL", "RCPT" or "DATA"). A code outside
    200-599 is not one a relay may send (RFC 5321 4.2): treated as temporary, never as a
    reason to stop mailing someone. RFC 3463 says what the enhanced code's subject means:
    x.1.x is the address; x.3.x (system), x.6.x (content) and x.7.x (policy) are about the
    message. 552 (too big) and 554 (transaction failed) refuse the message.
    """
    text = f"{code} {message}".strip()
    if not 500 <= code <= 599:
        return TemporaryFailure(text)
    enhanced = _ENHANCED.search(message)
    subject = enhanced.group(2) if enhanced else ""
    if subject == "1" or _NO_SUCH_USER.search(message):
        return PermanentFailure(text)
    if subject in ("3", "6", "7") or code in (552, 554):
        return MessageRefused(text)
    # No detail: a 5xx to RCPT is about that address, a 5xx to MAIL or DATA about the message.
    return PermanentFailure(text) if stage == "RCPT" else MessageRefused(text)


class Transport(Protocol):
    """Anything that can hand one message to one recipient (SMTP relay, Maildir, a test fake).

    `before_data`, when given, must be awaited before the message can be accepted (for
    SMTP: before DATA): it finishes the previous message's bookkeeping, which the outbox
    starts in the background so that it overlaps this message's envelope.
    """

    async def send(self, envelope_from: str, recipient: str, raw: bytes, *,
                   before_data: BeforeData | None = None) -> None: ...

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

    async def send(self, envelope_from: str, recipient: str, raw: bytes, *,
                   before_data: BeforeData | None = None) -> None:
        """Write the message, with the envelope as Return-Path / Delivered-To headers."""
        if before_data is not None:
            await before_data()
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


def _path(address: str) -> bytes:
    """`<address>` for MAIL FROM / RCPT TO.

    The outbox holds bare, checked addresses, so aiosmtplib's parsing of each one (twice per
    message, ~5% of a transaction) is skipped; CR/LF are still refused by aiosmtplib.
    """
    if any(c in address for c in "<> \t"):
        raise PermanentFailure(f"not a bare email address: {address!r}")
    return b"<" + address.encode("ascii") + b">"


class SMTPTransport:
    """One aiosmtplib connection, opened on first use and reused for every message."""

    def __init__(self, settings: Outbound, token: Callable[[], str] | None = None) -> None:
        self.settings = settings
        self.token = token  # [oauth2]: AUTH XOAUTH2 with a fresh access token
        self._smtp: aiosmtplib.SMTP | None = None

    async def _connect(self) -> aiosmtplib.SMTP:
        s = self.settings
        implicit_tls = s.port == 465
        # Loading the CA bundle costs ~17 ms: only when the connection will use TLS.
        context = (ssl.create_default_context(cafile=str(s.cafile) if s.cafile else None)
                   if implicit_tls or s.starttls else None)
        smtp = aiosmtplib.SMTP(
            hostname=s.host, port=s.port, timeout=s.timeout,
            start_tls=s.starttls if not implicit_tls else False,
            use_tls=implicit_tls, tls_context=context,
        )
        try:
            await smtp.connect()
            if self.token is not None:
                # A refresh is an HTTP round trip: off the event loop.
                access = await asyncio.get_running_loop().run_in_executor(None, self.token)
                await smtp.auth_xoauth2(s.username, access)
            elif s.username:
                await smtp.login(s.username, s.password)
            if smtp.is_ehlo_or_helo_needed:  # before the first MAIL, so SIZE is known
                try:
                    await smtp.ehlo()
                except aiosmtplib.SMTPHeloError:
                    await smtp.helo()
        except aiosmtplib.SMTPAuthenticationError as exc:
            smtp.close()  # connected, not logged in: not left for the garbage collector
            raise RelayDown(f"relay {s.host}:{s.port} refused login: {exc}") from exc
        except OAuth2Error as exc:  # mail stays queued; the message says to log in again
            smtp.close()
            raise RelayDown(f"relay {s.host}:{s.port}: {exc}") from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise RelayDown(f"relay {s.host}:{s.port} unreachable: {exc}") from exc
        ADVERTISED_SIZE[(s.host, s.port)] = relay_size_limit(smtp)
        return smtp

    async def send(self, envelope_from: str, recipient: str, raw: bytes, *,
                   before_data: BeforeData | None = None) -> None:
        """Send over the shared connection; reconnect once if the relay dropped it."""
        sender, rcpt = _path(envelope_from), _path(recipient)
        for attempt in (1, 2):
            if self._smtp is None or not self._smtp.is_connected:
                self._smtp = await self._connect()
            try:
                await self._transaction(self._smtp, sender, rcpt, raw, before_data)
                return
            except Withheld:
                await self._reset()  # MAIL and RCPT were given: the relay forgets them
                raise
            except aiosmtplib.SMTPResponseException as exc:
                await self._reset()
                stage = ("RCPT" if isinstance(exc, aiosmtplib.SMTPRecipientRefused) else
                         "MAIL" if isinstance(exc, aiosmtplib.SMTPSenderRefused) else "DATA")
                raise classify_refusal(exc.code, exc.message, stage) from exc
            except (aiosmtplib.SMTPServerDisconnected, ConnectionError) as exc:
                self._smtp = None
                if attempt == 2:
                    raise TemporaryFailure(f"relay disconnected: {exc}") from exc
            except (aiosmtplib.SMTPException, OSError) as exc:
                self._smtp = None
                raise TemporaryFailure(f"relay error: {exc}") from exc

    @staticmethod
    async def _transaction(smtp: aiosmtplib.SMTP, sender: bytes, rcpt: bytes, raw: bytes,
                           before_data: BeforeData | None) -> None:
        """MAIL FROM, RCPT TO, then DATA once `before_data` is done: sendmail, minus parsing.

        SIZE (RFC 1870) is the length: exact, as outbox content has CRLF line ends.
        """
        size = (b"SIZE=%d" % len(raw),) if smtp.supports_extension("size") else ()
        limit = relay_size_limit(smtp)
        if limit and len(raw) > limit:
            # The relay said in EHLO it takes nothing bigger: refused without asking, for this
            # message only (its recipient still gets the next, smaller one).
            raise MessageRefused(f"552 message of {len(raw)} bytes exceeds the relay's SIZE "
                                 f"limit of {limit}")
        reply = await smtp.execute_command(b"MAIL", b"FROM:" + sender, *size)
        if reply.code != 250:
            raise aiosmtplib.SMTPSenderRefused(reply.code, reply.message, sender.decode())
        reply = await smtp.execute_command(b"RCPT", b"TO:" + rcpt)
        if reply.code not in (250, 251):
            raise aiosmtplib.SMTPRecipientRefused(reply.code, reply.message, rcpt.decode())
        if before_data is not None:
            await before_data()
        await SMTPTransport._data(smtp, raw)

    @staticmethod
    async def _data(smtp: aiosmtplib.SMTP, raw: bytes) -> None:
        """DATA and the message through aiosmtplib's public `SMTP.data` (it dot-stuffs).

        `SMTP.data` runs two regular expressions over every message (line ends, then dots):
        ~120 µs for a 7.8 KB update, where counting and replacing bytes took ~20 µs, which
        makes one connection ~10 % slower than driving the protocol object did. The raw
        baseline pays the same; two connections by default more than make up for it.
        """
        reply = await smtp.data(raw)
        if reply.code != 250:
            raise aiosmtplib.SMTPDataError(reply.code, reply.message)

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


# The SIZE each relay advertised when this process last connected to it, by (host, port):
# communications are rendered to fit it, not only `max_message_size`.
ADVERTISED_SIZE: dict[tuple[str, int], int] = {}


def relay_size_limit(smtp: aiosmtplib.SMTP) -> int:
    """The largest message the relay accepts (EHLO SIZE, RFC 1870); 0 when it set none."""
    value = (smtp.esmtp_extensions.get("size") or "").strip()
    return int(value) if value.isdigit() else 0


def size_limit(settings: Outbound) -> int:
    """The largest email to render: `max_message_size`, or less if the relay said so."""
    advertised = ADVERTISED_SIZE.get((settings.host, settings.port), 0) if settings.host else 0
    return min(settings.max_message_size, advertised) if advertised else \
        settings.max_message_size


def make_transport(settings: Outbound, maildir: Path,
                   token: Callable[[], str] | None = None) -> Transport:
    """SMTP when a relay host is configured (XOAUTH2 with `token`), else the Maildir."""
    return SMTPTransport(settings, token) if settings.host else MaildirTransport(maildir)


@dataclass
class Report:
    """What one delivery run did."""

    sent: int = 0
    retrying: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Claimed:
    """One claimed outbox row: what sending and the bookkeeping need (no ORM object per row)."""

    id: int
    incident_id: int | None
    kind: str
    recipient: str
    envelope_from: str
    raw: bytes
    created_at: datetime
    expires_at: datetime | None
    attempts: int
    # PostgreSQL: which of the lane's connections made the claim (the claim is void once
    # that backend is gone).
    connection: int = 0


def _sql_time(value: datetime) -> str:
    """A time as peewee stores it (naive UTC, ISO with a space), for raw statements."""
    return value.astimezone(timezone.utc).replace(tzinfo=None).isoformat(sep=" ")


def _naive(value: datetime) -> datetime:
    """A time as the PostgreSQL columns hold it (naive UTC)."""
    return value.astimezone(timezone.utc).replace(tzinfo=None)


def _aware(value: datetime) -> datetime:
    """A naive UTC time read from PostgreSQL, made aware."""
    return value.replace(tzinfo=timezone.utc)


def _from_sql(value: str) -> datetime:
    """The reverse of _sql_time (aware UTC)."""
    return datetime.fromisoformat(value).replace(tzinfo=timezone.utc)


def _alive(pid: int) -> bool:
    """Whether a process still exists (a crashed sender's claims can be taken over at once)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def _settle(job: concurrent.futures.Future[Any] | None) -> None:
    """Wait for a `sent` mark (usually already done: then without a loop round-trip).

    Its failure is not raised here: Outbox._marked has logged it when it happened.
    """
    if job is not None and not job.done():
        with contextlib.suppress(Exception):
            await asyncio.wrap_future(job)


_Job = tuple["concurrent.futures.Future[Any]", Callable[..., Any], tuple[Any, ...]]


class _Lane:
    """The background thread, with its own SQLite connection, of the outbox's bookkeeping.

    Commits here use synchronous = NORMAL: WAL survives a crash of the process, and only a
    power cut can lose the last of them, which costs one more copy of an email (a lost `sent`
    mark) or a message queued again (a lost claim); an fsync per message would cost more
    than building it. Lanes never checkpoint on commit (`wal_autocheckpoint = 0`), so copying
    the WAL back never stalls a mark: the lane checkpoints after each claim instead.
    A plain daemon thread and queue: lighter per job than ThreadPoolExecutor, and a process
    that never closes its app still exits.
    """

    def __init__(self, database: str, name: str) -> None:
        self.database = database
        self.name = name
        self.connection = 0  # how many connections the lane has opened: which one is in use
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def submit(self, job: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        """Run `job(connection, *args)` on this lane's thread, after what is already queued."""
        done: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._start()
        self._jobs.put((done, job, args))
        return done

    def run(self, job: Callable[..., T], *args: Any) -> T:
        """Run `job(connection, *args)` on this lane's thread and wait for its result."""
        return self.submit(job, *args).result()

    def close(self) -> None:
        """Finish queued jobs, then close the connection and the thread."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None

    def _start(self) -> None:
        if self._thread is None:
            # A daemon thread: a process that never closes its app still exits.
            self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
            self._thread.start()

    def _serve(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while (item := self._jobs.get()) is not None:
                done, job, args = item
                for attempt in (1, 2):
                    try:
                        if conn is None:
                            conn = self._connect()
                            self.connection += 1
                        done.set_result(job(conn, *args))
                        break
                    except BaseException as exc:  # handed to whoever waits for the job
                        # The PostgreSQL server dropped it (broken, or closed once its
                        # termination notice was read), maybe long ago while this lane was
                        # idle: once more on a new connection. Every lane job may run twice
                        # (a mark is idempotent; a claim or release made on a dropped
                        # connection belongs to a backend that is gone, so it is void).
                        dropped = conn is not None and (getattr(conn, "broken", False)
                                                        or getattr(conn, "closed", False))
                        if dropped and conn is not None:
                            with contextlib.suppress(Exception):
                                conn.close()
                            conn = None
                        if not dropped or attempt == 2:
                            done.set_exception(exc)
                            break
        finally:
            if conn is not None:
                conn.close()

    def _connect(self) -> Any:
        if self.database.startswith("postgresql://"):
            import psycopg

            # Autocommit: each claim or mark is one statement, committed on its own.
            return psycopg.connect(self.database, autocommit=True)
        conn = sqlite3.connect(self.database, isolation_level=None, check_same_thread=False,
                               timeout=10)
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        conn.execute("PRAGMA cache_size = -16000")  # 16 MB: a 200-email batch is ~2.5 MB
        return conn


class Outbox:
    """Queue, claim and deliver outgoing mail."""

    def __init__(self, db: Database, retry_for: timedelta = timedelta(days=1)) -> None:
        self.db = db
        self.retry_for = retry_for
        # Claims, marks and releases take turns on one thread: a second one for the marks
        # (so that a claim never delays the next DATA) measured no faster on the fan-out.
        self._lane = _Lane(db.database, "mailflow-outbox")
        self._postgres = isinstance(db, PostgresqlDatabase)
        self._claimer: int | None = None
        # Stop sending this batch: on PostgreSQL a mark failed or the lane reconnected (the
        # server dropped the backend holding our claims, which another instance may take
        # now), or a worker failed and the others must stop before the batch is given back.
        self._lost = False
        if self._postgres:
            # Several instances share the outbox: rows are claimed with SKIP LOCKED, and a
            # claim is void once its claimer's connection is gone from the server.
            self._claim = self._claim_pg  # type: ignore[method-assign]
            self._release = self._release_pg  # type: ignore[method-assign]
            self._checkpoint = lambda conn: None  # type: ignore[method-assign]
        else:
            # The lane copies the WAL back after each claim, in the background; the
            # main connection would do it inside the commit that queues a fan-out (~12 ms
            # per 1,000 emails, before the first one can go out). It still does past 40 MB.
            db.execute_sql(f"PRAGMA wal_autocheckpoint = {WAL_BACKSTOP}")
        self.queued = 0  # messages queued by this process: the daemon wakes its sender on a change
        self.urgent = False  # mail with a priority was queued since the last look

    def close(self) -> None:
        """Close the bookkeeping connection (after its last commits)."""
        self._lane.close()

    def enqueue(self, incident_id: int | None, kind: str, envelope_from: str,
                messages: Sequence[tuple[str, str, bytes]], now: datetime,
                expires_at: datetime | None = None, priority: int = 0,
                not_before: Mapping[str, datetime] | None = None) -> None:
        """Queue (recipient, Message-ID, raw bytes) triples; the caller's transaction commits.

        `priority`: higher is claimed first (mail for the lead goes ahead of a fan-out).
        `not_before`: recipient → when their copy may go (held until working hours).

        One executemany: peewee's per-row query building cost more than the SQLite insert.
        """
        at = _sql_time(now)
        expires = _sql_time(expires_at) if expires_at else None
        later = {r: _sql_time(t) for r, t in (not_before or {}).items()}
        self.queued += len(messages)
        if priority > 0:
            self.urgent = True  # a drain in progress takes it ahead of the rest of its batch
        p = self.db.param  # ? on SQLite, %s on PostgreSQL
        self.db.cursor().executemany(
            "INSERT INTO outmessage (incident_id, kind, recipient, envelope_from, message_id, "
            "raw, created_at, next_attempt_at, expires_at, attempts, status, last_error, priority) "
            f"VALUES ({', '.join([p] * 9)}, 0, 'queued', '', {p})",
            # A held copy's retry window starts when it may go, not when it was queued.
            [(incident_id, kind, rcpt, envelope_from, mid, raw, later.get(rcpt, at),
              later.get(rcpt, at), expires, priority) for rcpt, mid, raw in messages])

    def release_held(self, incident_id: int, recipients: Sequence[str], now: datetime) -> int:
        """Send now what was held for working hours to these recipients of one incident
        (a later email of the incident goes at once: the earlier ones go first)."""
        if not recipients:
            return 0
        p = self.db.param
        among = "= ANY(%s)" if self._postgres else "IN (SELECT value FROM json_each(?))"
        cur = self.db.execute_sql(
            f"UPDATE outmessage SET next_attempt_at = {p} WHERE incident_id = {p} AND status = "
            f"'queued' AND attempts = 0 AND last_error = '' AND next_attempt_at > {p} "
            f"AND recipient {among}",
            (_sql_time(now), incident_id, _sql_time(now),
             list(recipients) if self._postgres else json.dumps(list(recipients))))
        return int(cur.rowcount or 0)

    def pending(self) -> int:
        """How many messages are not yet sent or failed."""
        return OutMessage.select().where(OutMessage.status.in_(("queued", "sending"))).count()

    def unsent(self, message_ids: Iterable[str]) -> list[OutMessage]:
        """Of these messages, the ones not sent (yet): queued, sending, failed or bounced."""
        wanted = list(dict.fromkeys(message_ids))
        out: list[OutMessage] = []
        for i in range(0, len(wanted), 500):  # SQLite's limit on bound parameters
            out.extend(OutMessage.select().where(OutMessage.message_id.in_(wanted[i:i + 500])
                                                 & (OutMessage.status != "sent")))
        return out

    def pending_now(self, now: datetime) -> bool:
        """Whether a message is queued and due at `now` (a drain should start)."""
        return OutMessage.select().where((OutMessage.status == "queued")
                                         & (OutMessage.next_attempt_at <= now)).exists()

    def claim(self, now: datetime, limit: int = 500) -> list[Claimed]:
        """Take due messages (oldest first, one per recipient at a time) for this sender."""
        return self._lane.run(self._claim, now, limit)

    def _claim_ahead(self, now: datetime, limit: int) -> concurrent.futures.Future[list[Claimed]]:
        """Claim on the lane, then copy the WAL back while that batch goes out."""
        claimed = self._lane.submit(self._claim, now, limit)
        self._lane.submit(self._checkpoint)
        return claimed

    # Due for this sender: queued and due, or claimed by a sender that is gone (lease over,
    # or its process dead).
    _DUE = ("((status = 'queued' AND next_attempt_at <= :at) OR (status = 'sending' AND "
            "(claimed_until <= :at OR claimed_by IN (SELECT value FROM json_each(:dead)))))")
    # One message per recipient at a time: nothing earlier to them is still waiting.
    # A message of higher priority (the lead's reminder) may pass their place in a fan-out.
    # Mail held until working hours (never tried, not yet due) does not hold up the rest.
    _FIRST = ("NOT EXISTS (SELECT 1 FROM outmessage AS e WHERE e.recipient = m.recipient "
              "AND e.status IN ('queued', 'sending') AND e.id < m.id "
              "AND e.priority >= m.priority "
              "AND NOT (e.status = 'queued' AND e.attempts = 0 AND e.last_error = '' "
              "AND e.next_attempt_at > :at))")

    def _claim(self, conn: sqlite3.Connection, now: datetime, limit: int,
               urgent: bool = False) -> list[Claimed]:
        """The claim itself, on the lane; raw SQL (peewee objects cost more than SQL).

        Other writers wait while the write lock is held, so it is held only for the UPDATE
        (~0.5 ms for 200 rows): candidates are found, and their content read (which also
        brings their pages into the cache the UPDATE needs), before it. The UPDATE checks
        every candidate again, so one another sender took meanwhile is skipped.
        """
        me = os.getpid()
        dead = [pid for (pid,) in conn.execute(
            "SELECT DISTINCT claimed_by FROM outmessage "
            "WHERE status = 'sending' AND claimed_by IS NOT NULL") if pid != me and not _alive(pid)]
        params = {"at": _sql_time(now), "dead": json.dumps(dead), "me": me,
                  "until": _sql_time(now + LEASE), "limit": limit}
        # Deadlines before bulk: higher priority first, then in order. `id IN (due)` keeps
        # the scan to what is due; `urgent` takes only mail with a priority.
        only = "AND priority > 0 " if urgent else ""
        candidates = conn.execute(
            "SELECT id, incident_id, kind, recipient, envelope_from, raw, created_at, expires_at "
            f"FROM outmessage AS m WHERE id IN (SELECT id FROM outmessage WHERE {self._DUE}) "
            f"{only}AND {self._FIRST} ORDER BY priority DESC, id LIMIT :limit", params).fetchall()
        if not candidates:
            return []
        # NOT INDEXED: look the candidates up by id, not by scanning the status index.
        taken = dict(conn.execute(
            "UPDATE outmessage AS m NOT INDEXED SET status = 'sending', "
            "claimed_until = :until, claimed_by = :me "
            f"WHERE id IN (SELECT value FROM json_each(:ids)) AND {self._DUE} "
            f"AND {self._FIRST} RETURNING id, attempts",
            {**params, "ids": json.dumps([c[0] for c in candidates])}).fetchall())
        return [Claimed(id, incident_id, kind, recipient, envelope_from, raw,
                        _from_sql(created_at), expires_at and _from_sql(expires_at), taken[id])
                for (id, incident_id, kind, recipient, envelope_from, raw, created_at,
                     expires_at) in candidates if id in taken]

    # PostgreSQL: the same rule in one statement. SKIP LOCKED: rows another instance is
    # claiming right now are left to it, not waited for; the one-per-recipient test sees
    # committed claims only, and a row locked by another claim is not taken here.
    _DUE_PG = ("((status = 'queued' AND next_attempt_at <= %(at)s) OR (status = 'sending' AND "
               "(claimed_until <= %(at)s OR (claimed_by IS NOT NULL AND claimed_by <> %(me)s "
               "AND claimed_by NOT IN (SELECT pid FROM pg_stat_activity)))))")

    def _claim_pg(self, conn: Any, now: datetime, limit: int,
                  urgent: bool = False) -> list[Claimed]:
        """The claim on PostgreSQL: `FOR UPDATE SKIP LOCKED`, claimed by this connection.

        `claimed_by` is the claim connection's backend pid: the server knows which are
        alive on every host, so a crashed instance's claims are taken over at once.
        """
        me = self._claimer_id(conn)
        params = {"at": _naive(now), "me": me, "until": _naive(now + LEASE), "limit": limit}
        only = "AND priority > 0 " if urgent else ""
        rows = conn.execute(
            "WITH c AS (SELECT id FROM outmessage AS m "
            f"WHERE {self._DUE_PG} {only}AND {self._FIRST.replace(':at', '%(at)s')} "
            "ORDER BY priority DESC, id LIMIT %(limit)s FOR UPDATE SKIP LOCKED) "
            "UPDATE outmessage AS o SET status = 'sending', claimed_until = %(until)s, "
            "claimed_by = %(me)s FROM c WHERE o.id = c.id RETURNING o.id, o.incident_id, "
            "o.kind, o.recipient, o.envelope_from, o.raw, o.created_at, o.expires_at, "
            "o.attempts, o.priority", params).fetchall()
        rows.sort(key=lambda r: (-r[9], r[0]))
        return [Claimed(id, incident_id, kind, recipient, envelope_from, bytes(raw),
                        _aware(created_at), expires_at and _aware(expires_at), attempts,
                        self._lane.connection)
                for (id, incident_id, kind, recipient, envelope_from, raw, created_at,
                     expires_at, attempts, _) in rows]

    def _claimer_id(self, conn: Any | None = None) -> int:
        """Who this outbox claims as: its PID on SQLite, its claim connection on PostgreSQL."""
        if not self._postgres:
            return os.getpid()
        if conn is not None:
            self._claimer = int(conn.execute("SELECT pg_backend_pid()").fetchone()[0])
        return self._claimer if self._claimer is not None else -1

    def _release_pg(self, conn: Any, messages: Sequence[Claimed]) -> None:
        """Give claimed but unsent messages back (PostgreSQL)."""
        conn.execute(
            "UPDATE outmessage SET status = 'queued', claimed_until = NULL, claimed_by = NULL "
            "WHERE status = 'sending' AND claimed_by = %s AND id = ANY(%s)",
            (self._claimer_id(), [m.id for m in messages]))

    @staticmethod
    def _checkpoint(conn: sqlite3.Connection) -> None:
        """Copy what the WAL holds back into the database, without waiting for readers.

        Also after the claim that ends a run: the WAL is then synced in the background,
        not by the next fsynced commit (a reply's 250 waits for that one).
        """
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:  # the next commit elsewhere checkpoints instead
            log.warning("WAL checkpoint skipped: %s", exc)

    def _release(self, conn: sqlite3.Connection, messages: Sequence[Claimed]) -> None:
        """Give claimed but unsent messages back (a run stopped before their turn)."""
        conn.execute(
            "UPDATE outmessage SET status = 'queued', claimed_until = NULL, claimed_by = NULL "
            "WHERE status = 'sending' AND claimed_by = ? "
            "AND id IN (SELECT value FROM json_each(?))",
            (os.getpid(), json.dumps([m.id for m in messages])))

    def _mark(self, msg: Claimed, at: str) -> concurrent.futures.Future[None]:
        """Record one delivery on the lane; a failure is logged by _marked."""
        job = self._lane.submit(self._mark_sent, msg, at)
        job.add_done_callback(functools.partial(self._marked, msg))
        return job

    def _mark_sent(self, conn: sqlite3.Connection, msg: Claimed, at: str) -> None:
        if self._postgres and msg.connection != self._lane.connection:
            # The lane reconnected since this message was claimed: the server dropped the
            # backend that held the batch's claims, and another instance may take (and
            # send) the rest of it now. It is marked, and the batch stops as after a lost mark.
            self._lost = True
        p = self.db.param
        conn.execute(
            f"UPDATE outmessage SET status = 'sent', sent_at = {p}, claimed_until = NULL, "
            f"attempts = attempts + 1 WHERE id = {p}", (at, msg.id))

    def _marked(self, msg: Claimed, job: concurrent.futures.Future[None]) -> None:
        if (exc := job.exception()) is not None:
            # It went out; unmarked, it will be sent again once its claim is void.
            log.error("could not mark the email to %s as sent", msg.recipient, exc_info=exc)
            if self._postgres:
                # The server may have dropped our connections, and with them our claims,
                # which another instance may take now: this batch stops.
                self._lost = True

    async def _before_data(self, marking: concurrent.futures.Future[None] | None) -> None:
        """The previous message's mark is committed; if it was lost, this one is withheld."""
        await _settle(marking)
        if self._lost:
            # Sending it anyway would make a second email that may go out twice.
            raise Withheld("the outbox lost its database connection")

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
        self._lost = False
        clock = clock or (lambda: now)
        stop = should_stop or (lambda: False)
        workers = [transport, *transports][: max(1, concurrency)]
        claimed_at = clock()
        # A small first batch, so that the first email goes out at once; the next batch is
        # claimed while it does.
        batch = await asyncio.wrap_future(self._claim_ahead(claimed_at, PREFETCH_AT))
        queue: deque[Claimed] = deque()
        nxt: concurrent.futures.Future[list[Claimed]] | None = None
        try:
            while batch and not stop():
                # Stop a little before the lease ends: past it, another sender may take the
                # rest.
                lease_end = claimed_at + LEASE - timedelta(seconds=30)
                queue = deque(batch)
                send = functools.partial(self._worker, queue=queue, clock=clock,
                                         lease_end=lease_end, stop=stop, report=report)
                await self._all(send, workers, keep=PREFETCH_AT)
                nxt = None
                if len(queue) <= PREFETCH_AT and not stop() and not self._lost:
                    next_at = clock()
                    nxt = self._claim_ahead(next_at, BATCH)
                await self._all(send, workers, keep=0)
                if queue or stop() or nxt is None or self._lost:
                    break
                batch, claimed_at, nxt = await asyncio.wrap_future(nxt), next_at, None
                if not batch:
                    # Claimed ahead, it could not take what was queued behind this batch's
                    # messages (one per recipient at a time): look again now they are sent.
                    claimed_at = clock()
                    batch = await asyncio.wrap_future(self._claim_ahead(claimed_at, BATCH))
        finally:
            # Stopped early (time, SIGTERM, a lost connection): what no worker took from this
            # batch, and a batch claimed ahead, were never handed to a relay. They are given
            # back now, not left claimed until the lease ends (the emails queued behind
            # them, to the same people, would wait as long).
            await self._give_back(list(queue), nxt)
        return report

    async def _all(self, send: Callable[..., Awaitable[None]], workers: Sequence[Transport],
                   keep: int) -> None:
        """Run one worker per transport; if one fails, the others stop after their message.

        Every worker has ended when this returns or raises: none is left sending from a
        batch its caller gives back.
        """
        results = await asyncio.gather(*(send(t, keep=keep) for t in workers),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _give_back(self, unsent: list[Claimed],
                         ahead: concurrent.futures.Future[list[Claimed]] | None) -> None:
        """Release claimed messages no worker started; a failure leaves them to their lease."""
        try:
            if ahead is not None:
                unsent = unsent + await asyncio.wrap_future(ahead)
            if unsent:
                await asyncio.wrap_future(self._lane.submit(self._release, unsent))
        except Exception as exc:  # the database is gone: the claims are void with it
            log.warning("could not give back %d claimed email(s): %s", len(unsent), exc)

    async def _worker(self, transport: Transport, *, queue: deque[Claimed], keep: int,
                      clock: Callable[[], datetime], lease_end: datetime,
                      stop: Callable[[], bool], report: Report) -> None:
        """Send from `queue` until `keep` messages are left (or time is up)."""
        # The previous message's `sent` mark, committing on the lane: the transport
        # awaits it before DATA, so at most the message in flight can be sent twice.
        marking: concurrent.futures.Future[None] | None = None
        try:
            while len(queue) > keep:
                now = clock()
                if now >= lease_end or stop() or self._lost:
                    return  # deliver gives back what is left
                if self.urgent:
                    # The lead's reminder was queued during this drain: it goes next, not
                    # after the hundreds of messages already claimed.
                    self.urgent = False
                    queue.extendleft(reversed(await asyncio.wrap_future(
                        self._lane.submit(self._claim, now, PREFETCH_AT, True))))
                    if not queue:
                        return
                msg = queue.popleft()
                if msg.expires_at is not None and now >= msg.expires_at:
                    await _settle(marking)
                    self._expired(msg, now, report)
                    continue
                try:
                    await transport.send(msg.envelope_from, msg.recipient, msg.raw,
                                         before_data=functools.partial(self._before_data,
                                                                       marking))
                except Withheld:
                    queue.appendleft(msg)  # not sent: given back with the rest
                    return
                except Exception as exc:
                    await _settle(marking)  # bookkeeping in order, one writer at a time
                    self._failure(msg, exc, now, queue, report)
                else:
                    await _settle(marking)  # a transport that ignored before_data
                    marking = self._mark(msg, _sql_time(now))
                    report.sent += 1
        except BaseException:
            self._lost = True  # the other workers stop too: their batch is given back
            raise
        finally:
            await _settle(marking)

    def _failure(self, msg: Claimed, exc: Exception, now: datetime, queue: deque[Claimed],
                 report: Report) -> None:
        """Record why a message did not go out (a retry, or a failure)."""
        if isinstance(exc, PermanentFailure):
            self._failed(msg, now, str(exc), report,
                         dead_recipient=not isinstance(exc, MessageRefused))
        elif isinstance(exc, RelayDown):
            # Nobody can be reached: probe again in a minute with the whole batch, without
            # counting it as an attempt for each message (their backoff would grow for
            # nothing, and delay everything for half an hour after a short blip).
            self._retry(msg, now, str(exc), report, probe=True)
            while queue:
                self._retry(queue.popleft(), now, str(exc), report, quiet=True, probe=True)
        elif isinstance(exc, TemporaryFailure):
            self._retry(msg, now, str(exc), report)
        else:  # one bad message must not stall the whole outbox
            log.error("delivery to %s failed unexpectedly", msg.recipient, exc_info=exc)
            self._failed(msg, now, f"could not be sent: {exc!r}", report, dead_recipient=False)

    def _mine(self, msg: Claimed) -> Any:
        """Write back only a claim that is still ours (another sender may have taken it)."""
        return ((OutMessage.id == msg.id) & (OutMessage.status == "sending")
                & (OutMessage.claimed_by == self._claimer_id()))

    def _expired(self, msg: Claimed, now: datetime, report: Report) -> None:
        with self.db.atomic():
            OutMessage.update(status="expired", claimed_until=None,
                              last_error="not sent before its deadline").where(
                self._mine(msg)).execute()
        report.errors.append(f"{msg.kind} email to {msg.recipient} dropped: its deadline passed")
        log.warning("%s email to %s dropped: its deadline passed", msg.kind, msg.recipient)

    def _retry(self, msg: Claimed, now: datetime, error: str, report: Report,
               quiet: bool = False, probe: bool = False) -> None:
        if now - msg.created_at >= self.retry_for:
            self._failed(msg, now, f"gave up after {format_duration(self.retry_for)}: {error}",
                         report, dead_recipient=False)
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

    def _failed(self, msg: Claimed, now: datetime, error: str, report: Report, *,
                dead_recipient: bool) -> None:
        """Record a message that will not be sent; `dead_recipient`: send them nothing more.

        A refused recipient (no such user) gets no more mail from this incident; a refused
        message (too big, content policy), an unexpected error, or giving up after an outage
        does not stop the next communication to them.
        """
        with self.db.atomic():
            OutMessage.update(status="failed", claimed_until=None, attempts=msg.attempts + 1,
                              last_error=error).where(self._mine(msg)).execute()
            if msg.incident_id is not None:
                Recipient.update(status="failed" if dead_recipient else "active",
                                 last_error=error).where(
                    (Recipient.incident == msg.incident_id) & (Recipient.email == msg.recipient)
                ).execute()
                Entry.create(incident=msg.incident_id, at=now, kind="failure", author="mailflow",
                             text=f"{msg.kind} email to {msg.recipient} failed: {error}")
                if msg.kind != "notice":  # a failed notice is not noticed again (no loops)
                    schedule_failure_notice(msg.incident_id, msg.kind, msg.created_at, now)
        report.failed += 1
        report.errors.append(f"{msg.recipient}: {error}")
        log.error("delivery to %s failed permanently: %s", msg.recipient, error)


def communication_key(kind: str, created_at: datetime) -> str:
    """What names one communication (all the copies queued together) in the due table."""
    return f"{kind}@{created_at.astimezone(timezone.utc).isoformat()}"


def schedule_failure_notice(incident_id: int, kind: str, created_at: datetime,
                            now: datetime) -> None:
    """Ask the scheduler for one notice to the lead about this communication's failures.

    Failures of the same communication share the job: a due job pending already takes the
    new one along; one already done is revived for the failures it did not tell.
    """
    key = communication_key(kind, created_at)
    Due.insert(incident=incident_id, kind="failures", key=key, due_at=now).on_conflict(
        conflict_target=[Due.incident, Due.kind, Due.key],
        update={Due.done_at: None, Due.outcome: "", Due.due_at: now},
        where=Due.done_at.is_null(False),
    ).execute()
