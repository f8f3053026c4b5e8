"""`mailflow serve`: the inbound SMTP server, the scheduler tick and the outbox in one loop.

Signal handlers only set flags; the loop acts on them. SIGTERM stops accepting, lets the
SMTP transaction in flight commit, and exits 0. SIGHUP reloads config, contacts and
templates, keeping the old ones if the new ones are invalid.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import resource
import signal
import socket
from collections.abc import Callable
from datetime import datetime
from typing import Any

import schedule

from . import clock, httpapi, statuspage
from .app import Mailflow
from .errors import MailflowError
from .ha import Membership
from .inbound import Gate, InboundHandler, listen
from .migrations import SchemaError
from .scheduler import run_due

log = logging.getLogger(__name__)


def sd_notify(state: str) -> None:
    """Tell systemd (Type=notify) about our state; a no-op outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("could not notify systemd: %s", exc)


def settle_heap() -> None:
    """Leave what start-up built (modules, templates, the CSS cache) out of the collector.

    A full collection walked all of it, about 70,000 objects, and stopped every thread
    for up to 60 ms: the slowest replies' answers under load. Frozen, they are never
    walked again. Called again after a reload: what the reload replaced is thawed and
    collected first, so it does not stay frozen for the life of the process.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class Daemon:
    """One asyncio process: inbound server + tick + outbox sender."""

    def __init__(self, app: Mailflow, tick_seconds: float = 5.0,
                 now: Callable[[], datetime] = clock.now) -> None:
        self.app = app
        self.tick_seconds = tick_seconds
        self.now = now
        self.port = 0
        self.http: httpapi.Listener | None = None
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._reload = False
        self._contacts_mtime = self._mtime()
        self._delivering: asyncio.Task[None] | None = None
        self.ha: Membership | None = None  # this instance among others on the database
        self.exit_code = 0
        # [inbound] mode = "imap": a current OAuth2 access token for XOAUTH2 (else the password).
        from .oauth2 import token_source  # stdlib only: msal is imported by the login alone

        self.imap_token: Callable[[], str] | None = token_source(app.config)
        self.imap: Any = None  # the ImapReader, when replies are read from a mailbox

    def _mtime(self) -> float | None:
        try:
            return self.app.config.contacts.stat().st_mtime
        except OSError:
            return None

    def request_stop(self) -> None:
        """Ask the loop to shut down cleanly (SIGTERM, SIGINT)."""
        self._stop.set()

    def request_reload(self) -> None:
        """Ask the loop to reload config, contacts and templates (SIGHUP)."""
        self._reload = True
        self._wake.set()

    def reload(self) -> bool:
        """Reload now; on error keep the old copies and log where the problem is."""
        try:
            self.app.reload()
        except MailflowError as exc:
            log.error("reload refused, keeping the last good configuration: %s", exc)
            return False
        finally:
            self._contacts_mtime = self._mtime()
        log.info("reloaded config, contacts and templates")
        settle_heap()  # the replaced config, contacts and templates are collected
        return True

    async def tick(self) -> None:
        """Do what is due, then start sending the outbox (even if some due work failed).

        The sending runs as a task of its own: a long fan-out through a slow relay never
        holds up the next tick's reminders and marks (what they queue with a priority is
        taken into the running drain).
        """
        now = self.now()
        try:
            if self.ha is not None and not await self._schedules(now):
                return  # another instance runs the scheduler; this one only sends
            # On a thread: a database locked by another process must not stall the loop.
            report = await asyncio.to_thread(run_due, self.app, now)
            for line in report.done:
                log.info("done: %s", line)
        finally:
            if self._delivering is None or self._delivering.done():
                self._delivering = asyncio.ensure_future(self._deliver(now))

    async def _schedules(self, now: datetime) -> bool:
        """Heartbeat, and whether this instance holds the scheduler; a newer schema stops it."""
        assert self.ha is not None
        try:
            return await asyncio.to_thread(self.ha.tick, now)
        except SchemaError as exc:
            log.error("stopping: %s", exc)
            self.exit_code = 1
            self.request_stop()
            return False

    async def _deliver(self, now: datetime) -> None:
        try:
            delivery = await self.app.deliver(now, clock=self.now, should_stop=self._stop.is_set)
        except Exception:  # the daemon keeps running; the next tick tries again
            log.exception("delivery failed")
            return
        if delivery.sent:
            log.info("sent %d email(s)", delivery.sent)
        if self.app.outbox.pending_now(self.now()):
            self._wake.set()  # queued while this drain ran: a new one at once

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT; returns the exit code."""
        loop = asyncio.get_running_loop()
        cfg = self.app.config
        handler = InboundHandler(self.app, self.now, on_posted=self._wake.set, apply_after=True)
        loop.set_exception_handler(calm_exceptions)
        _enough_file_descriptors(cfg.inbound.max_connections)
        gate = Gate(cfg.inbound)
        server: asyncio.Server | None = None
        if cfg.inbound.mode == "imap":
            from .imap import ImapReader  # imapclient only where it is used

            self.imap = ImapReader(self.app, handler, token=self.imap_token, now=self.now,
                                   on_posted=self._wake.set, loop=loop)
            self.imap.start()
            where = f"reading replies from {self.imap.mailbox}"
        else:
            server = await listen(self.app, handler, cfg.inbound.host, cfg.inbound.port, gate)
            self.port = server.sockets[0].getsockname()[1]
            where = f"listening on {cfg.inbound.host}:{self.port}"
            log.info("listening for replies on %s:%d", cfg.inbound.host, self.port)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        # Alert webhooks and one-click unsubscribes ([http] enabled), in this same loop.
        self.http = await httpapi.start(self.app, self.now, on_queued=self._wake.set)
        statuspage.mark_dirty(self.app)  # the status page is rewritten (and copied) at start
        sd_notify(f"READY=1\nSTATUS={where}")

        self.ha = await asyncio.to_thread(Membership, self.app, self.now())
        # `schedule` paces the tick; the event lets a posted reply be sent at once.
        pacer = schedule.Scheduler()
        # schedule takes a float interval although its hints say int
        pacer.every(self.tick_seconds).seconds.do(self._wake.set)  # type: ignore[arg-type]
        self._wake.set()
        settled = False
        while not self._stop.is_set():
            if self._reload:
                self._reload = False
                self.reload()
            elif self._mtime() != self._contacts_mtime:
                log.info("contacts file changed; reloading")
                self.reload()
            if self._wake.is_set():
                self._wake.clear()
                try:
                    await self.tick()
                except MailflowError as exc:
                    log.error("tick failed: %s", exc)
                except Exception:  # the daemon keeps running; the next tick tries again
                    log.exception("tick failed")
                if not settled:
                    settled = True
                    settle_heap()
            pacer.run_pending()
            waiters = [asyncio.ensure_future(self._stop.wait()),
                       asyncio.ensure_future(self._wake.wait())]
            await asyncio.wait(waiters, timeout=min(1.0, self.tick_seconds),
                               return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()

        if self._delivering is not None:
            await self._delivering  # it stops between two messages (should_stop)
        sd_notify("STOPPING=1")
        log.info("stopping: no new connections; finishing the transaction in flight")
        if server is not None:
            server.close()
        if self.imap is not None:  # lets the message being applied commit, then hangs up
            await asyncio.to_thread(self.imap.stop)
        if self.http is not None:
            await self.http.close()
        for _ in range(300):  # up to 30 s for a DATA being committed
            if handler.in_flight == 0:
                break
            await asyncio.sleep(0.1)
        await gate.close_all()
        if server is not None:
            await server.wait_closed()
        await asyncio.to_thread(handler.close)  # applies the accepted replies still waiting
        await asyncio.to_thread(self.ha.leave)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        log.info("stopped")
        return self.exit_code


class _Calm(logging.Filter):
    """At most one record per message per minute from a chatty library logger.

    A flood of connections makes asyncio and aiosmtpd log the same error (with traceback)
    thousands of times a second; one line per minute, with the count, says as much.
    """

    EVERY = 60.0

    def __init__(self) -> None:
        super().__init__()
        self._last: dict[str, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = str(record.msg)[:200]
        at, dropped = self._last.get(key, (float("-inf"), 0))
        if record.created - at < self.EVERY:
            self._last[key] = (at, dropped + 1)
            return False
        if len(self._last) > 1000:  # many distinct messages: forget the old ones
            self._last.clear()
        self._last[key] = (record.created, 0)
        if dropped:
            record.msg = f"{record.msg} (and {dropped} more like it in the last minute)"
        return True


def calm_exceptions(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """asyncio's errors (accept() out of file descriptors...) as one line, rate-limited."""
    exc = context.get("exception")
    message = context.get("message", "unhandled error in the event loop")
    if isinstance(exc, OSError | ValueError):
        logging.getLogger("asyncio").error(message.replace("%", "%%") + ": %s", exc)
    else:
        loop.default_exception_handler(context)


def _enough_file_descriptors(connections: int) -> None:
    """Raise the soft limit on open files so that max_connections fit, with room to spare."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = connections + 200  # the database, the outbox's connections, logs...
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < want:
            log.warning("only %d open files allowed (LimitNOFILE): lower [inbound] "
                        "max_connections below %d", new, new - 200)


class JournalFormatter(logging.Formatter):
    """`<3>message` priority prefixes when stderr goes to journald, plain text otherwise."""

    PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
                logging.CRITICAL: 2}

    def __init__(self) -> None:
        self.journal = bool(os.environ.get("JOURNAL_STREAM"))
        # journald stamps each line itself; elsewhere a timestamp helps.
        fmt = "%(name)s: %(message)s" if self.journal else \
            "%(asctime)s %(levelname)s %(name)s: %(message)s"
        super().__init__(fmt)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if self.journal:
            prefix = f"<{self.PRIORITY.get(record.levelno, 6)}>"
            text = "\n".join(prefix + line for line in text.splitlines())
        return text


def setup_logging(level: int = logging.INFO) -> None:
    """Log to stderr (journald keeps it under systemd)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JournalFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's per-command chatter
    for name in ("mail.log", "asyncio"):
        logging.getLogger(name).filters[:] = [_Calm()]
