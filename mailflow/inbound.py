"""The aiosmtpd handler for replies: RCPT checks the signed token, DATA parses, commits, 250.

In the daemon (`apply_after`), a reply whose answer is certain is committed as received,
answered 250, and parsed and applied after it by the backlog (accepted.py).

No sender stalls the event loop: parsing and the database run on worker threads with a
time budget ([inbound] process_timeout), and the server caps connections, unfinished DATA,
recipients and MIME parts.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
import re
import ssl
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from email._header_value_parser import get_addr_spec, get_angle_addr
from email.errors import HeaderParseError
from typing import TYPE_CHECKING, Any, AnyStr

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from peewee import OperationalError

from . import clock
from .accepted import Backlog
from .config import Inbound
from .incidents import read_under_lock
from .models import Accepted, Incident, is_postgres, wait_at_most
from .posting import accept_declaration, accept_reply
from .replies import header_sender, parse_reply
from .tokens import split_address, verify

if TYPE_CHECKING:
    from .app import Mailflow

log = logging.getLogger(__name__)

_UNPRINTABLE = re.compile(r"[^\x20-\x7e]+")


def smtp_answer(code: int, message: str) -> str:
    """One SMTP reply line: printable 7-bit ASCII, no line break, at most 512 octets.

    The message may name the sender, and `böb@example.org` is a valid address: without
    SMTPUTF8 aiosmtpd cannot encode it and drops the session with "500 Error:
    (UnicodeEncodeError)"; with it, UTF-8 goes to clients that never asked for it.
    """
    text = message.encode("ascii", "backslashreplace").decode("ascii")
    return f"{code} {_UNPRINTABLE.sub(' ', text).strip()}"[:510]


_BOUNDARY = re.compile(rb'boundary\s*=\s*(?:"([^"\r\n]*)"|([^\s;"]+))', re.I)
_DELIMITER = re.compile(rb"^--([^\r\n]*)", re.M)

BUSY = "451 4.3.0 busy: the message could not be processed in time; try again later"


def count_parts(raw: bytes, limit: int) -> int:
    """MIME parts in `raw` (nested multiparts included), counting at most to `limit` + 1.

    A linear scan of the bytes, before any parser runs: a part begins at a `--boundary` line
    of a boundary the message declares. Sibling and nested parts count alike, so the same
    cap bounds the nesting depth too.
    """
    boundaries = set()
    for m in _BOUNDARY.finditer(raw):
        boundaries.add((m.group(1) if m.group(1) is not None else m.group(2)).rstrip(b" \t"))
        if len(boundaries) > limit:  # every boundary is declared by a part of its own
            return limit + 1
    if not boundaries:
        return 1
    parts = 1
    for m in _DELIMITER.finditer(raw):
        name = m.group(1).rstrip(b" \t")
        if name in boundaries:  # `--b--` closes, `--b` opens a part
            parts += 1
            if parts > limit:
                break
    return parts


class _Budget:
    """One message's time budget, shared by the SMTP side and the worker thread.

    The worker may start applying the message only while the budget holds; once it has,
    the SMTP side waits for its commit. So a 451 always means that nothing was committed,
    and the MTA's retry is the first time the message is applied.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = clock.monotonic() + seconds
        self._lock = threading.Lock()
        self._state = "waiting"  # waiting | applying | abandoned

    def remaining(self) -> float:
        """Seconds left; negative once past."""
        return self.deadline - clock.monotonic()

    def begin(self) -> bool:
        """Worker: may it apply the message now? False once abandoned or past the budget."""
        with self._lock:
            if self._state == "abandoned" or self.remaining() <= 0:
                self._state = "abandoned"
                return False
            self._state = "applying"
            return True

    def abandon(self) -> bool:
        """SMTP side, past the budget: True if the worker will not apply the message."""
        with self._lock:
            if self._state == "applying":
                return False
            self._state = "abandoned"
            return True


class _Late(Exception):
    """The budget ran out before the message was applied; nothing is committed."""


class _Job:
    """One message waiting for a group commit: its work, and what came of it."""

    __slots__ = ("work", "budget", "done", "result", "error")

    def __init__(self, work: Callable[[], Any], budget: _Budget | None) -> None:
        self.work, self.budget = work, budget
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None


class GroupCommit:
    """Applies messages in write transactions, as many per COMMIT as are waiting.

    The fsync of a COMMIT cost as much as applying a reply. So a worker that finds the
    write lock taken queues its message, and whoever takes the lock next applies every
    queued message, each in a savepoint of its own (one that fails is rolled back alone),
    and commits them together: every message is on disk before any of them is answered.
    """

    def __init__(self, db: Any) -> None:
        self.db = db
        self._pending: list[_Job] = []
        self._mutex = threading.Lock()  # guards _pending
        self._leader = threading.Lock()  # held by the thread running a transaction

    def run(self, work: Callable[[], Any], budget: _Budget | None) -> Any:
        """Run `work` in a committed write transaction (maybe shared) and return its result."""
        job = _Job(work, budget)
        with self._mutex:
            self._pending.append(job)
        with self._leader:
            if not job.done:  # else an earlier leader took it along
                with self._mutex:
                    batch, self._pending = self._pending, []
                self._commit(batch)
        if job.error is not None:
            raise job.error
        return job.result

    def _commit(self, batch: list[_Job]) -> None:
        budgets = [j.budget.remaining() for j in batch if j.budget is not None]
        try:
            if budgets:
                # Wait for another writer only as long as the budgets allow (this thread's
                # own connection), instead of the connection's default 10 s.
                wait_at_most(self.db, min(budgets))
            with self.db.atomic("IMMEDIATE"):
                for job in batch:
                    if job.budget is not None and not job.budget.begin():
                        job.error = _Late()
                        continue
                    try:
                        with self.db.atomic():  # a savepoint: a failure undoes this one only
                            job.result = job.work()
                    except Exception as exc:
                        job.error = exc
        except Exception as exc:  # BEGIN or COMMIT failed: nothing of the batch is kept
            for job in batch:
                if job.error is None:
                    job.error, job.result = exc, None
        finally:
            for job in batch:
                job.done = True


class InboundHandler:
    """Turns replies to `local+TOKEN@domain` into updates; knows nothing of sockets."""

    WORKERS = 4  # SQLite has one writer; more threads would only wait for its lock
    VALID_TOKENS = 4096  # signed tokens remembered as valid (their HMAC is not redone)

    def __dir__(self) -> list[str]:
        # aiosmtpd's SMTP.__init__ looks for handle_* and auth_* hooks with dir() and
        # inspect.getmembers() on every new connection, reading each attribute (the
        # `limits` property included): a tenth of a reply's CPU under load.
        return _names(type(self), "handle_")

    def __init__(self, app: Mailflow, now: Callable[[], datetime] = clock.now,
                 on_posted: Callable[[], Any] | None = None, apply_after: bool = False) -> None:
        self.app = app
        self.now = now
        self.on_posted = on_posted  # wakes the outbox sender when a reply queued mail
        self.in_flight = 0  # DATA transactions being committed; SIGTERM waits for them
        # Parsing and the database run here, never on the event loop; each thread has its
        # own SQLite connection (peewee's connection state is per thread).
        self.executor = ThreadPoolExecutor(self.WORKERS, thread_name_prefix="mailflow-inbound")
        self._known: set[int | str] = set()  # incident ids seen to exist (see `_exists`)
        self._refs: dict[int, str] = {}  # incidents past their draft (never one again): ref
        # (token, secrets) -> incident id, for valid tokens only: a reply's RCPT and DATA
        # check the same token, and a stranger's random tokens cannot fill it.
        self._valid: dict[tuple[str, tuple[str, ...]], int] = {}
        self.group = GroupCommit(app.db)
        # apply_after (the daemon): replies whose answer is certain are answered 250 once
        # stored, and applied after it (accepted.py). Without it every reply is applied
        # before its answer (tests of the outcomes, the IMAP reader's folders). Not on
        # PostgreSQL: there several daemons share the `accepted` table, and each would apply
        # the rows it found at start; a reply is applied before its answer there.
        self.backlog: Backlog | None = None
        if apply_after and not is_postgres(app.db):
            try:
                loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            self.backlog = Backlog(app.db, self.group, self._apply_accepted, self._parse_accepted,
                                   on_queued=self._queued_from_thread(loop))

    @property
    def limits(self) -> Inbound:
        """[inbound]'s limits (kept across a reload, like the listening address)."""
        return self.app.config.inbound

    def close(self) -> None:
        """Let the messages being processed finish, apply the accepted ones, stop the threads."""
        # Each worker thread has its own database connection (peewee keeps one per thread).
        # One closing task per worker, all held at a barrier so that each runs on a thread
        # of its own: a PostgreSQL connection would otherwise stay open until collected.
        barrier = threading.Barrier(self.WORKERS)

        def close_connection() -> None:
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait(timeout=5)
            self.app.db.close()

        for _ in range(self.WORKERS):
            self.executor.submit(close_connection)
        self.executor.shutdown(wait=True)
        if self.backlog is not None:
            self.backlog.close()

    def _queued_from_thread(self, loop: asyncio.AbstractEventLoop | None
                            ) -> Callable[[], None] | None:
        """`on_posted`, callable from the applier thread (an asyncio.Event is not thread-safe)."""
        on_posted = self.on_posted
        if on_posted is None:
            return None

        def notify() -> None:
            if loop is None:
                on_posted()
            else:
                loop.call_soon_threadsafe(on_posted)
        return notify

    def is_base(self, address: str) -> bool:
        """The reply address without a token: where incidents are declared by email."""
        cfg = self.app.config
        local, token, domain = split_address(address)
        return token is None and local == cfg.reply_local.lower() \
            and domain == cfg.reply_domain.lower()

    def target(self, address: str) -> str | int | None:
        """What an address names: "base", an incident id (any spelling of its token), or None."""
        if self.is_base(address):
            return "base"
        cfg = self.app.config
        local, token, domain = split_address(address)
        if local != cfg.reply_local.lower() or domain != cfg.reply_domain.lower() or not token:
            return None
        key = (token, cfg.secrets(self.now()))  # a rotated-out secret is a new key
        incident_id = self._valid.get(key)
        if incident_id is None:
            incident_id = verify(token, key[1])
            if incident_id is not None:
                if len(self._valid) >= self.VALID_TOKENS:
                    self._valid.clear()
                self._valid[key] = incident_id
        return incident_id

    def incident_for(self, address: str) -> Incident | None:
        """The open-or-not incident a recipient address names, if its token is valid."""
        incident_id = self.target(address)
        if not isinstance(incident_id, int):
            return None
        return Incident.get_or_none(Incident.id == incident_id)

    def _exists(self, incident_id: int | str) -> bool:
        """Whether the incident exists; once seen it is remembered (DATA reads it anyway,
        and forgets it if it is gone), so a reply's RCPT costs no query."""
        if incident_id in self._known:
            return True
        if Incident.select().where(Incident.id == incident_id).exists():
            self._known.add(incident_id)
            return True
        return False

    def _incident(self, incident_id: int) -> Incident | None:
        """The incident's row, by a fixed SQL text: peewee building its 40-column SELECT
        cost more than SQLite running it (the columns are converted as usual)."""
        p = self.app.db.param
        query = Incident.raw(f"SELECT * FROM {Incident._meta.table_name} WHERE id = {p}",
                             incident_id)
        return next(iter(query), None)

    def _rcpt(self, address: str, accepted: list[str]) -> tuple[str, bool]:
        """(answer, whether to add `address` to the envelope); runs on a worker thread."""
        target = self.target(address)
        if target is None or (target != "base" and not self._exists(target)):
            log.info("RCPT %s refused: not a valid incident address", address)
            return "550 5.1.1 unknown recipient: not a valid incident reply address", False
        if any(self.target(a) == target for a in accepted):
            # Another spelling of an address already given: the message is applied once.
            return "250 OK (already a recipient)", False
        if len(accepted) >= self.limits.max_recipients:
            return f"452 4.5.3 too many recipients (at most {self.limits.max_recipients})", False
        return "250 OK", True

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        """550 before any DATA for anything but a valid signed incident address."""
        target = self.target(address)  # an HMAC: no I/O
        if target is None or target == "base" or target in self._known:
            # Nothing to read from the database: answered here, without a thread hop.
            answer, add = self._rcpt(address, list(envelope.rcpt_tos))
            if add:
                envelope.rcpt_tos.append(address)
            return answer
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(self.executor, self._rcpt, address, list(envelope.rcpt_tos))
        try:
            answer, add = await asyncio.wait_for(asyncio.shield(job),
                                                 self.limits.process_timeout)
        except TimeoutError:
            return BUSY
        if add:
            envelope.rcpt_tos.append(address)
        return answer

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Parse the reply, apply it, commit, and only then answer 250 (or 451, nothing kept)."""
        self.in_flight += 1
        try:
            budget = _Budget(self.limits.process_timeout)
            loop = asyncio.get_running_loop()
            job = loop.run_in_executor(self.executor, self._run, envelope, budget)
            try:
                answer, queued = await asyncio.wait_for(asyncio.shield(job), budget.seconds)
            except TimeoutError:
                if budget.abandon():
                    log.warning("message from %s not processed within %gs: answered 451",
                                envelope.mail_from or "<>", budget.seconds)
                    return BUSY
                answer, queued = await job  # being applied: its commit decides the answer
            if queued and self.on_posted is not None:
                self.on_posted()  # the reply queued mail (send now, resolved...): send it at once
            return answer
        finally:
            self.in_flight -= 1

    def _run(self, envelope: Envelope, budget: _Budget | None) -> tuple[str, bool]:
        """On a worker thread: (SMTP answer, whether mail was queued); never raises."""
        try:
            return self._process(envelope, budget)
        except _Late:
            return BUSY, False
        except OperationalError as exc:  # another writer held the lock past the budget
            log.warning("message from %s not processed: database %s; answered 451",
                        envelope.mail_from or "<>", exc)
            return BUSY, False
        except Exception:  # never let one bad message take the server down
            log.exception("reply from %s could not be processed", envelope.mail_from)
            return "451 4.3.0 could not process the message; try again later", False

    def _data(self, envelope: Envelope) -> str:
        """The whole DATA step on the calling thread, without a budget (tests, tools)."""
        return self._process(envelope, None)[0]

    def _process(self, envelope: Envelope, budget: _Budget | None) -> tuple[str, bool]:
        raw, mail_from = envelope.original_content or b"", envelope.mail_from or ""
        rcpt_tos = list(envelope.rcpt_tos)
        if self.backlog is not None:
            answer = self._accept(raw, mail_from, rcpt_tos, budget)
            if answer is not None:
                return answer, False
        return self.process(raw, mail_from, rcpt_tos, budget)

    def _accept(self, raw: bytes, mail_from: str, rcpt_tos: list[str],
                budget: _Budget | None) -> str | None:
        """Store a reply whose answer is certain and answer 250; None: apply it first.

        Certain: one incident past its draft, and a From address of contacts.yaml, which may
        always post (`posting.may_post`): whatever the reply says, its answer is 250. The
        reply is in the database (fsynced) before the answer, and applied by the backlog.
        """
        assert self.backlog is not None
        if self.backlog.full():
            return None
        max_parts = self.limits.max_parts
        if count_parts(raw, max_parts) > max_parts:
            return None  # refused by `process`, with its message
        targets = {self.target(a) for a in rcpt_tos}
        if len(targets) != 1:
            return None
        target = targets.pop()
        if not isinstance(target, int) or isinstance(target, bool):
            return None
        ref = self._refs.get(target)
        if ref is None:
            incident = self._incident(target)
            if incident is None or incident.status == "draft":
                return None
            ref = self._refs[target] = incident.ref
        if not self.app.contacts.knows(header_sender(raw)):
            return None
        if budget is not None and budget.remaining() <= 0:
            raise _Late
        now, backlog = self.now(), self.backlog
        self.group.run(lambda: backlog.store(target, now, mail_from, raw), budget)
        backlog.stored()
        return smtp_answer(250, f"2.0.0 accepted for {ref}; applied in the order received")

    def _parse_accepted(self, row: Accepted) -> Any:
        """The backlog's parse of a stored reply (outside the write lock)."""
        return parse_reply(row.content, envelope_from=row.mail_from)

    def _apply_accepted(self, row: Accepted, reply: Any) -> bool:
        """The backlog's apply of a stored reply, inside its savepoint: whether mail was queued."""
        before = self.app.outbox.queued
        code, message = self._apply(row.incident_id, reply, bytes(row.content), row.mail_from,
                                    row.received_at)
        if code >= 400:  # contacts.yaml changed, or the incident was deleted, since the 250
            log.warning("reply from %s to INC-%d, answered 250, not applied: %s",
                        reply.sender or "<>", row.incident_id, message)
        return self.app.outbox.queued != before

    def process(self, raw: bytes, mail_from: str | None, rcpt_tos: list[str],
                budget: _Budget | None = None) -> tuple[str, bool]:
        """Apply one message to the incidents its recipients name, in one transaction:
        (SMTP-style answer, whether mail was queued). Any transport calls this; None as
        `mail_from` means the envelope sender is unknown (mail read from a mailbox)."""
        envelope_from = mail_from
        mail_from = mail_from or ""
        max_parts = self.limits.max_parts
        if count_parts(raw, max_parts) > max_parts:
            log.info("message from %s refused: more than %d MIME parts", mail_from or "<>",
                     max_parts)
            return smtp_answer(552, f"5.3.4 too many MIME parts (at most {max_parts})"), False
        reply = parse_reply(raw, envelope_from=envelope_from)
        targets: list[str | int] = []
        for address in rcpt_tos:
            target = self.target(address)
            if target is None:
                targets.append(address)  # the secret rotated out since RCPT: unknown below
            elif target not in targets:  # other spellings of one address: applied once
                targets.append(target)
        if budget is not None and budget.remaining() <= 0:
            raise _Late

        def apply() -> tuple[list[tuple[int, str]], bool]:
            before = self.app.outbox.queued
            now = self.now()
            answers = [self._apply(target, reply, raw, mail_from, now) for target in targets]
            return answers, self.app.outbox.queued != before

        # One transaction (savepoint) for every recipient: all of the message is committed
        # before the 250, or none of it (a 451 after a declaration would declare again at
        # each retry).
        answers, queued = self.group.run(apply, budget)
        # One answer for the whole DATA: success if any incident took it.
        best = min(answers, default=(550, "5.1.1 no recipient"), key=lambda a: a[0])
        return smtp_answer(*best), queued

    def _apply(self, target: str | int, reply: Any, raw: bytes, mail_from: str,
               now: datetime) -> tuple[int, str]:
        if target == "base":
            outcome = accept_declaration(self.app, reply, raw, mail_from, now)
            log.info("declaration from %s: %s", reply.sender or "<>", outcome.message)
            return outcome.code, outcome.message
        incident = self._incident(target) if isinstance(target, int) else None
        if incident is None:  # deleted (or its token's secret retired) between RCPT and DATA
            self._known.discard(target)
            return 550, "5.1.1 unknown incident"
        # Read inside this transaction's write lock: `locked` need not read it again.
        with read_under_lock(incident):
            outcome = accept_reply(self.app, incident, reply, raw, mail_from, now)
        log.info("reply from %s to %s: %s", reply.sender or "<>", incident.ref, outcome.outcome)
        return outcome.code, outcome.message


# --- the server: one protocol per connection, and limits across all of them --------------

class Gate:
    """Counts what all connections hold together: open connections and unfinished DATA."""

    LOG_EVERY = 60.0  # seconds: at most one line about refused connections per minute

    def __init__(self, limits: Inbound) -> None:
        self.limits = limits
        self.open = 0
        self.pending_bytes = 0
        self.refused = 0
        self._logged_at: float | None = None
        self.connections: set[_Protocol] = set()

    async def close_all(self) -> None:
        """Hang up on every connection still open (after the server stopped listening)."""
        for protocol in list(self.connections):
            if protocol.transport is not None:
                protocol.transport.close()
        for _ in range(3):  # let connection_lost run and the session tasks end
            await asyncio.sleep(0)

    def refuse(self, why: str) -> None:
        """Count a refusal; log the count at most once per LOG_EVERY."""
        self.refused += 1
        at = clock.monotonic()
        if self._logged_at is None or at - self._logged_at >= self.LOG_EVERY:
            log.warning("refused %d connection(s) or DATA since the last report: %s",
                        self.refused, why)
            self.refused, self._logged_at = 0, at


class _Busy(asyncio.Protocol):
    """Past max_connections: answer 421 and hang up, holding nothing."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(b"421 4.7.0 too many connections; try again later\r\n")
        transport.close()


_NAMES: dict[tuple[type, tuple[str, ...]], list[str]] = {}


def _names(cls: type, *prefixes: str) -> list[str]:
    """A class's attribute names that start with one of `prefixes` (once per class)."""
    names = _NAMES.get((cls, prefixes))
    if names is None:
        names = _NAMES[cls, prefixes] = [n for n in dir(cls) if n.startswith(prefixes)]
    return names


@functools.lru_cache(maxsize=4096)
def _smtp_address(arg: str, local_part_limit: int) -> tuple[str | None, str | None]:
    """aiosmtpd's `SMTP._getaddr`, remembered: (address, rest), (None, None) if unparsable."""
    if not arg:
        return "", ""
    try:
        if arg.lstrip().startswith("<"):
            angle, rest = get_angle_addr(arg)
            addr = angle.addr_spec
        else:
            spec, rest = get_addr_spec(arg)
            addr = spec.addr_spec
    except HeaderParseError:
        return None, None
    localpart = addr.rpartition("@")[0]
    if local_part_limit and len(localpart) > local_part_limit:
        return None, None
    return addr, rest


class _Protocol(SMTP):
    """aiosmtpd's SMTP with the gate's accounting: a connection slot and DATA bytes.

    Two of aiosmtpd's per-connection costs are fixed per class or per address, and are
    remembered here: its `__init__` finds the smtp_* and auth_* methods with
    `inspect.getmembers(self)`, which reads every attribute of every new connection (a
    tenth of a reply's CPU under load), and every MAIL and RCPT parses its address with the
    email header parser (declaring a class each time).
    """

    def __dir__(self) -> list[str]:
        return _names(type(self), "smtp_", "auth_")

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        return _smtp_address(arg, self.local_part_limit)

    def __init__(self, handler: InboundHandler, gate: Gate, **options: Any) -> None:
        super().__init__(handler, **options)
        self.gate = gate
        self._held: list[bytes] = []  # the lines of a multi-line reply, sent with its last
        self._counted = True
        gate.open += 1
        gate.connections.add(self)

    async def push(self, status: AnyStr) -> None:
        # aiosmtpd writes each line of a multi-line reply (EHLO's six) by itself: a send()
        # each, and each send gives the worker threads the GIL. The lines before the last
        # ("250-...") are held and go out with it, in one send.
        line = status if isinstance(status, bytes) else \
            status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii")
        if line[3:4] == b"-" and b"\n" not in line:
            self._held.append(line + b"\r\n")
            return
        if self._held:
            line, self._held = b"".join(self._held) + line, []
        await super().push(line)

    def connection_lost(self, error: Exception | None) -> None:
        if self._counted:
            self._counted = False
            self.gate.open -= 1
            self.gate.connections.discard(self)
        super().connection_lost(error)

    async def smtp_DATA(self, arg: str) -> None:
        gate, limit = self.gate, self.gate.limits.max_pending_bytes
        if gate.pending_bytes >= limit and self.envelope is not None and self.envelope.rcpt_tos:
            gate.refuse(f"more than max_pending_bytes ({limit}) of DATA in progress")
            await self.push("451 4.3.2 too much mail in progress; try again later")
            return
        reader = self._reader
        readuntil = reader.readuntil
        held = 0

        async def counted(separator: bytes = b"\n") -> bytes:
            nonlocal held
            line = await readuntil(separator)
            held += len(line)
            gate.pending_bytes += len(line)
            if gate.pending_bytes > limit:
                # The memory of all unfinished DATA is capped: hang up on the one that
                # crossed it (421 may be sent at any time), the client retries later.
                gate.refuse(f"more than max_pending_bytes ({limit}) of DATA in progress")
                self._writer.write(b"421 4.3.2 too much mail in progress; try again later\r\n")
                if self.transport is not None:
                    self.transport.close()
                raise asyncio.CancelledError
            return line

        reader.readuntil = counted  # type: ignore[method-assign, assignment]
        try:
            await super().smtp_DATA(arg)
        finally:
            reader.readuntil = readuntil  # type: ignore[method-assign]
            gate.pending_bytes -= held


def make_protocol(app: Mailflow, handler: InboundHandler, gate: Gate | None = None
                  ) -> asyncio.Protocol:
    """The protocol for one connection, with [inbound]'s size, TLS, AUTH and limits."""
    cfg = app.config.inbound
    gate = gate if gate is not None else Gate(cfg)
    if gate.open >= cfg.max_connections:
        gate.refuse(f"more than max_connections ({cfg.max_connections}) open")
        return _Busy()
    tls_context = None
    if cfg.tls_cert and cfg.tls_key:
        tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls_context.load_cert_chain(str(cfg.tls_cert), str(cfg.tls_key))
    authenticator = None
    if cfg.username:
        def authenticator(server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                          auth_data: Any) -> AuthResult:
            ok = isinstance(auth_data, LoginPassword) and hmac.compare_digest(
                auth_data.login, cfg.username.encode()) and hmac.compare_digest(
                auth_data.password, cfg.password.encode())
            return AuthResult(success=ok, handled=False)
    return _Protocol(handler, gate, data_size_limit=cfg.max_size,
                     hostname=app.config.reply_domain, ident="mailflow", enable_SMTPUTF8=True,
                     tls_context=tls_context, require_starttls=cfg.require_tls,
                     authenticator=authenticator, auth_required=bool(cfg.username),
                     # AUTH without TLS is only accepted by the config on loopback (config.py).
                     auth_require_tls=tls_context is not None,
                     timeout=cfg.idle_timeout)


async def listen(app: Mailflow, handler: InboundHandler, host: str, port: int,
                 gate: Gate | None = None) -> asyncio.Server:
    """Serve `handler` on host:port (0: any free port) with one gate for all connections."""
    gate = gate if gate is not None else Gate(app.config.inbound)
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: make_protocol(app, handler, gate), host, port)
