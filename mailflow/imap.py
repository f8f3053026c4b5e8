"""Replies read from an IMAP mailbox ([inbound] mode = "imap") instead of the SMTP server.

IMAPClient is a blocking library, so the reader runs on a thread of its own: it waits in
IDLE (or polls every [imap] poll_every where the server has no IDLE), applies each message
through the very same `InboundHandler.process` the SMTP server uses, and hands what the
event loop must know (mail was queued: send it) back with `call_soon_threadsafe`.

Exactly once: each message is applied and recorded in `imapmessage` (mailbox, UIDVALIDITY,
UID, Message-ID, outcome) in one transaction, and only then moved to mailflow/posted,
mailflow/refused or mailflow/ignored. A message found again (the move was lost to a crash
or a dropped connection, or the server renumbered its UIDs) is recognised by its UID, else
by its Message-ID, and only moved. Nothing is ever deleted.
"""

from __future__ import annotations

import asyncio
import hashlib
import imaplib
import logging
import ssl
import threading
from collections.abc import Callable
from datetime import datetime
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses, parseaddr
from typing import TYPE_CHECKING, Any

from peewee import OperationalError

from . import clock
from .models import ImapMessage, ImapState

if TYPE_CHECKING:
    from imapclient import IMAPClient

    from .app import Mailflow
    from .inbound import InboundHandler

log = logging.getLogger(__name__)

OUTCOMES = ("posted", "refused", "ignored")
RECIPIENT_HEADERS = ("delivered-to", "x-original-to", "envelope-to", "to", "cc")
# What a dropped connection, a refused login or a server error raises.
TRANSIENT = (OSError, imaplib.IMAP4.error)


def envelope_sender(headers: Any) -> str | None:
    """The envelope sender of a delivered message: its Return-Path, else its From.

    The server that delivered the message into the mailbox wrote the SMTP MAIL FROM into
    Return-Path (the topmost one is the last hop's); "" for a bounce (`<>`), None when the
    message carries neither header.
    """
    value = headers.get("return-path")
    if value is None:
        value = headers.get("from")
        if value is None:
            return None
    address = parseaddr(str(value))[1]
    return address.strip().lower()


def recipients(headers: Any) -> list[str]:
    """Every address the message was delivered or written to, in header order."""
    found: list[str] = []
    for name in RECIPIENT_HEADERS:
        values = [str(v) for v in headers.get_all(name) or []]
        for _, address in getaddresses(values):
            if address and address not in found:
                found.append(address)
    return found


def folder_for(answer: str) -> str:
    """posted | refused | ignored, from the SMTP-style answer `process` gave."""
    if answer[:1] in ("4", "5"):
        return "refused"
    if any(word in answer for word in ("ignored", "already", "nothing to post")):
        return "ignored"
    return "posted"


class ImapReader:
    """Watches one mailbox folder and applies what arrives in it, exactly once."""

    MAX_IDLE = 25 * 60.0  # seconds: servers drop an IDLE after 30 minutes (RFC 2177)

    def __init__(self, app: Mailflow, handler: InboundHandler, *,
                 token: Callable[[], str] | None = None,
                 now: Callable[[], datetime] = clock.now,
                 on_posted: Callable[[], Any] | None = None,
                 loop: asyncio.AbstractEventLoop | None = None,
                 backoff_max: float = 300.0, timeout: float = 60.0) -> None:
        self.app = app
        self.handler = handler
        self.cfg = app.config.imap
        self.token = token  # a current OAuth2 access token: XOAUTH2 instead of the password
        self.now = now
        self.on_posted = on_posted
        self.loop = loop
        self.backoff_max = backoff_max
        self.timeout = timeout
        self.mailbox = f"{self.cfg.username}@{self.cfg.host}/{self.cfg.folder}"
        self.client: IMAPClient | None = None
        self.up: bool | None = None  # None until the first attempt
        self.processed = 0  # messages applied or moved; tests wait on `changed`
        self.changed = threading.Condition()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._targets: dict[str, str] = {}

    # --- the thread -----------------------------------------------------------------------

    def start(self) -> None:
        """Start reading on a thread of its own."""
        self._thread = threading.Thread(target=self.run, name="mailflow-imap", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the message being applied; closes the connection."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.disconnect()

    def wake(self) -> None:
        """Look at the mailbox now (cuts an IDLE, a poll wait or a backoff short)."""
        self._wake.set()

    def run(self) -> None:
        """Connect, drain, wait for mail; on any connection trouble reconnect with backoff."""
        delay = 1.0
        while not self._stop.is_set():
            try:
                client = self.connect()
                delay = 1.0
                self._serve(client)
            except TRANSIENT as exc:
                self._down(exc)
            except Exception as exc:  # the daemon keeps running; the next attempt may work
                log.exception("reading replies from %s failed", self.mailbox)
                self._down(exc)
            finally:
                self.disconnect()
            if self._stop.is_set():
                break
            self._wake.wait(delay)
            self._wake.clear()
            delay = min(delay * 2, self.backoff_max)
        # This thread's own database connection (peewee keeps one per thread): a PostgreSQL
        # connection would otherwise stay open until the garbage collector finds it.
        self.app.db.close()

    def _serve(self, client: IMAPClient) -> None:
        idle = client.has_capability("IDLE")
        wait = self.cfg.poll_every.total_seconds()
        while not self._stop.is_set():
            self.drain()
            if self._wake.is_set():
                self._wake.clear()
                continue
            if not idle:
                client.noop()  # a dead connection shows up now, not at the next message
                self._wake.wait(wait)
                continue
            client.idle()
            deadline = clock.monotonic() + min(wait, self.MAX_IDLE)
            try:
                # Short slices so that stop() and wake() are noticed within a second.
                while not self._stop.is_set() and not self._wake.is_set():
                    if client.idle_check(timeout=1.0) or clock.monotonic() >= deadline:
                        break
            finally:
                if not self._stop.is_set():
                    client.idle_done()

    # --- the connection -------------------------------------------------------------------

    def connect(self) -> IMAPClient:
        """Log in, make the mailflow folders, select the watched folder."""
        from imapclient import IMAPClient

        cfg = self.cfg
        context = ssl.create_default_context() if cfg.tls != "none" else None
        client = IMAPClient(cfg.host, cfg.port, ssl=cfg.tls == "implicit", ssl_context=context,
                            timeout=self.timeout)
        try:
            if cfg.tls == "starttls":
                client.starttls(context)
            if self.token is not None:
                client.oauth2_login(cfg.username, self.token())
            else:
                client.login(cfg.username, cfg.password)
            self._targets = self._folders(client)
            client.select_folder(cfg.folder)
        except BaseException:
            try:
                client.shutdown()
            except Exception:  # already gone; the original error is what matters
                pass
            raise
        self.client = client
        self._up()
        return client

    def disconnect(self) -> None:
        """Close the connection, if any (never raises)."""
        client, self.client = self.client, None
        if client is None:
            return
        try:
            client.shutdown()
        except Exception:  # already gone
            pass

    def _folders(self, client: IMAPClient) -> dict[str, str]:
        """mailflow/posted|refused|ignored in the server's own hierarchy, created if missing."""
        prefix, separator = "", "/"
        personal = client.namespace().personal
        if personal:
            prefix, sep = personal[0]
            prefix = prefix or ""
            separator = sep or separator
        names = {}
        parent = f"{prefix}mailflow"
        for outcome in OUTCOMES:
            name = f"{parent}{separator}{outcome}"
            if not client.folder_exists(name):
                client.create_folder(name)
                log.info("created IMAP folder %s", name)
            names[outcome] = name
        return names

    # --- state: one log line per change, and `mailflow show` says since when ---------------

    def _up(self) -> None:
        if self.up is True:
            return
        was_down = self.up is False
        self.up = True
        self._record_state(None, "")
        if was_down:
            log.info("reading replies from %s again", self.mailbox)
        else:
            log.info("reading replies from %s", self.mailbox)
        self._notify()

    def _down(self, exc: BaseException) -> None:
        error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if self.up is False:
            return
        self.up = False
        log.warning("cannot read replies from %s: %s; retrying with backoff", self.mailbox,
                    error)
        self._record_state(self.now(), error)
        self._notify()

    def _record_state(self, down_since: datetime | None, error: str) -> None:
        try:
            with self.app.db.atomic():
                now = self.now()
                # ON CONFLICT … DO UPDATE: both backends speak it (REPLACE is SQLite only).
                ImapState.insert(mailbox=self.mailbox, down_since=down_since, error=error,
                                 checked_at=now).on_conflict(
                    conflict_target=[ImapState.mailbox],
                    update={ImapState.down_since: down_since, ImapState.error: error,
                            ImapState.checked_at: now}).execute()
        except OperationalError as exc:  # a busy database must not stop the reading
            log.warning("could not record the IMAP state: %s", exc)

    def _notify(self) -> None:
        with self.changed:
            self.changed.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
        """Block until predicate() holds (checked at each processed message or state change)."""
        with self.changed:
            return self.changed.wait_for(predicate, timeout)

    # --- the messages ---------------------------------------------------------------------

    def drain(self) -> int:
        """Apply (or only move, if already applied) every message in the folder; how many."""
        client = self.client
        assert client is not None, "connect() first"
        selected = client.select_folder(self.cfg.folder)
        uidvalidity = int(selected[b"UIDVALIDITY"])
        done = 0
        for uid in sorted(client.search("ALL")):
            if self._stop.is_set():
                break
            self.message(client, uidvalidity, uid)
            done += 1
        return done

    def message(self, client: IMAPClient, uidvalidity: int, uid: int) -> str:
        """Apply one message once and move it to the folder of its outcome; the outcome."""
        seen = ImapMessage.get_or_none((ImapMessage.mailbox == self.mailbox)
                                       & (ImapMessage.uidvalidity == uidvalidity)
                                       & (ImapMessage.uid == uid))
        if seen is not None:  # applied, but the move did not happen: only move it now
            self._move(client, uid, seen.outcome)
            return str(seen.outcome)
        head = client.fetch([uid], ["RFC822.SIZE", "BODY.PEEK[HEADER]"]).get(uid)
        if head is None:  # expunged by someone else meanwhile
            return "gone"
        size = int(head.get(b"RFC822.SIZE", 0))
        header_bytes = head.get(b"BODY[HEADER]") or b""
        headers = BytesHeaderParser(policy=compat32).parsebytes(header_bytes)
        message_id = (str(headers.get("message-id") or "").strip())[:250]
        limit = self.app.config.inbound.max_size
        if size > limit:
            key = message_id or "sha256:" + hashlib.sha256(header_bytes).hexdigest()
            return self._settle(client, uidvalidity, uid, key, "refused",
                                f"{size} bytes, more than [inbound] max_size ({limit})",
                                headers)
        body = client.fetch([uid], ["BODY.PEEK[]"]).get(uid, {}).get(b"BODY[]") or b""
        key = message_id or "sha256:" + hashlib.sha256(body).hexdigest()
        earlier = ImapMessage.get_or_none((ImapMessage.mailbox == self.mailbox)
                                          & (ImapMessage.message_id == key))
        if earlier is not None:  # the same message under new UIDs (UIDVALIDITY changed)
            return self._settle(client, uidvalidity, uid, key, str(earlier.outcome),
                                "already applied", headers, applied=True)
        if not headers.keys() or headers.get("from") is None:
            return self._settle(client, uidvalidity, uid, key, "refused",
                                "cannot be parsed: no header block with a From", headers)
        to = [a for a in recipients(headers) if self.handler.target(a) is not None]
        if not to:
            return self._settle(client, uidvalidity, uid, key, "ignored",
                                "not addressed to an incident reply address", headers)
        sender = envelope_sender(headers)
        try:
            with self.app.db.atomic("IMMEDIATE"):
                answer, queued = self.handler.process(body, sender, to)
                outcome = folder_for(answer)
                ImapMessage.create(mailbox=self.mailbox, uidvalidity=uidvalidity, uid=uid,
                                   message_id=key, outcome=outcome, at=self.now())
        except OperationalError:
            raise  # the database is busy or gone: the message stays and is tried again
        except Exception:  # never retried forever: a message that breaks the pipeline
            log.exception("message %s (UID %d) could not be processed; moved to refused",
                          key, uid)
            return self._settle(client, uidvalidity, uid, key, "refused", "processing failed",
                                headers)
        log.info("IMAP UID %d from %s: %s -> %s", uid, sender or "<>", answer, outcome)
        if queued and self.on_posted is not None:
            if self.loop is not None:  # the outbox lives on the event loop: wake it there
                self.loop.call_soon_threadsafe(self.on_posted)
            else:
                self.on_posted()
        self.applied(uid)
        self._move(client, uid, outcome)
        return outcome

    def applied(self, uid: int) -> None:
        """Called after a message is committed and before it is moved (a crash point)."""

    def _settle(self, client: IMAPClient, uidvalidity: int, uid: int, key: str, outcome: str,
                why: str, headers: Any, applied: bool = False) -> str:
        """Record a message that is not applied (or was already), then move it."""
        with self.app.db.atomic("IMMEDIATE"):
            ImapMessage.insert(mailbox=self.mailbox, uidvalidity=uidvalidity, uid=uid,
                               message_id=key, outcome=outcome,
                               at=self.now()).on_conflict_ignore().execute()
        if not applied:
            log.info("IMAP UID %d from %s: %s -> %s", uid,
                     parseaddr(str(headers.get("from") or ""))[1] or "<>", why, outcome)
        self.applied(uid)
        self._move(client, uid, outcome)
        return outcome

    def _move(self, client: IMAPClient, uid: int, outcome: str) -> None:
        folder = self._targets[outcome]
        if client.has_capability("MOVE"):
            client.move([uid], folder)
        else:  # copy, then flag and expunge the original: still a move, never a loss
            client.copy([uid], folder)
            client.add_flags([uid], [b"\\Deleted"])
            if client.has_capability("UIDPLUS"):
                client.uid_expunge([uid])
            else:
                client.expunge()
        self.processed += 1
        self._notify()


def state(app: Mailflow) -> ImapState | None:
    """The IMAP mailbox's last known state, if replies cannot be read from it now."""
    if app.config.inbound.mode != "imap":
        return None
    return ImapState.select().where(ImapState.down_since.is_null(False)).order_by(
        ImapState.down_since).first()


def status_line(app: Mailflow) -> str:
    """One line for `mailflow show`/`list` when replies cannot be read, else ""."""
    down = state(app)
    if down is None:
        return ""
    since = clock.as_utc(down.down_since).strftime("%Y-%m-%d %H:%M")
    return (f"replies cannot be read since {since} UTC: {down.mailbox}: {down.error} "
            "(the daemon keeps retrying; nothing is lost)")
