"""A real SMTP sink on loopback (aiosmtpd) for tests, benchmarks and trying mailflow out.

It runs its own event loop in a thread, binds port 0 with `loop.create_server` (aiosmtpd's
Controller connects back to the configured port, which port 0 breaks), and can be switched
between accepting, refusing connections and answering 4xx/5xx: a relay outage on demand.
"""

from __future__ import annotations

import asyncio
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

# A small directory for tests and benchmarks: two time zones, three expertise tags, the
# three lists an incident escalates to, one service.
CONTACTS = """\
# Test directory: a comment that edits must keep.
people:
  - {name: Ana Lima, email: ana@example.org, expertise: [postgres, backups], timezone: Europe/Zurich}
  - {name: Bob Stone, email: bob@example.org, expertise: [moodle], timezone: America/New_York}
  - {name: Chloe Martin, email: chloe@example.org, expertise: [moodle, postgres, nginx]}
  - {name: Dan Boss, email: dan@example.org}
  - {name: Eve Chief, email: eve@example.org}
lists:
  stakeholders: [ana@example.org, ops-team@example.org]
  management: [dan@example.org]
  upper-management: [eve@example.org]
services:
  learn:
    title: ISC Learn Platform
    notify: [stakeholders]
    escalate: {4h: [management], 1d: [upper-management]}
    expertise: [moodle, postgres]
"""


def write_config(folder: Path, port: int | None, extra: str = "",
                 database: str = "state/mailflow.db") -> Path:
    """A mailflow.toml in `folder` sending to 127.0.0.1:port (Maildir when port is None);
    `database` a SQLite path or a postgresql:// URL."""
    outbound = (f'[outbound]\nhost = "127.0.0.1"\nport = {port}\nstarttls = false\n'
                if port else "")
    path = folder / "mailflow.toml"
    path.write_text(
        f'database = "{database}"\ncontacts = "contacts.yaml"\n'
        'from = "Incident Desk <incidents@example.org>"\nreply_to = "incidents@example.org"\n'
        f'secret = "test-secret-0123456789"\n{extra}\n{outbound}',
        encoding="utf-8",
    )
    if not (folder / "contacts.yaml").exists():
        (folder / "contacts.yaml").write_text(CONTACTS, encoding="utf-8")
    return path


@dataclass
class Received:
    """One message as the sink got it."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message(self) -> EmailMessage:
        """The parsed message (modern policy)."""
        msg = message_from_bytes(self.data, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        return msg


@dataclass
class SinkHandler:
    """aiosmtpd handler: records messages; `mode` decides how it answers."""

    received: list[Received] = field(default_factory=list)
    mode: str = "accept"  # accept | tempfail | permfail
    reject: set[str] = field(default_factory=set)  # recipients answered 550
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if self.mode == "tempfail":
            return "451 4.3.0 try again later"
        if self.mode == "permfail" or address.lower() in self.reject:
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.mode == "tempfail":
            return "421 4.3.0 closing"
        data = envelope.original_content or b""
        with self.lock:
            self.received.append(Received(envelope.mail_from or "", list(envelope.rcpt_tos), data))
        return "250 OK"


class Sink:
    """Start with `with Sink() as sink:`; `sink.port`, `sink.received`, `sink.refuse()`."""

    def __init__(self, host: str = "127.0.0.1", handler: Any = None,
                 data_size_limit: int | None = None, **smtp_options: Any) -> None:
        self.host = host
        self.port = 0
        # Any aiosmtpd handler can be served this way (tests serve mailflow's InboundHandler).
        self.handler = handler if handler is not None else SinkHandler()
        self.data_size_limit = data_size_limit
        self.smtp_options = smtp_options  # tls_context, authenticator... for aiosmtpd's SMTP
        self.loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    @property
    def received(self) -> list[Received]:
        """Everything accepted so far."""
        with self.handler.lock:
            return list(self.handler.received)

    def messages(self) -> list[EmailMessage]:
        """Parsed messages, in arrival order."""
        return [r.message for r in self.received]

    def clear(self) -> None:
        """Forget what was received."""
        with self.handler.lock:
            self.handler.received.clear()

    def _factory(self) -> SMTP:
        return SMTP(self.handler, hostname="sink.local", data_size_limit=self.data_size_limit,
                    **self.smtp_options)

    async def _listen(self, port: int) -> None:
        self._server = await self.loop.create_server(self._factory, self.host, port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def _call(self, coro: Any) -> None:
        asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def start(self) -> Sink:
        """Bind a free port and serve in a background thread."""
        self._thread.start()
        self._call(self._listen(0))
        return self

    def refuse(self) -> None:
        """Stop listening: connections are refused (the relay is down)."""
        self._call(self._close())

    def accept(self, mode: str = "accept") -> None:
        """Listen again on the same port; `mode` accept | tempfail | permfail."""
        self.handler.mode = mode
        if self._server is None:
            self._call(self._listen(self.port))

    def stop(self) -> None:
        """Close and stop the loop thread."""
        self._call(self._close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()

    def __enter__(self) -> Sink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- crash scenario: shared by tests/test_crash.py and bench/crash.py ---------------------

@dataclass
class CrashReport:
    """What a crash run saw; `ok` holds the README's delivery guarantees."""

    replies_sent: int = 0
    replies_acked: int = 0
    replies_found: int = 0
    acked_missing: list[str] = field(default_factory=list)
    posted_twice: list[str] = field(default_factory=list)
    emails_queued: int = 0
    emails_delivered: int = 0
    emails_missing: int = 0
    emails_duplicated: int = 0
    escalations: int = 0  # with `escalation_due`: escalation entries in the timeline
    escalation_emails: int = 0  # the emails they queued
    escalation_emails_delivered: int = 0  # of those, how many reached the relay (at least once)
    crashes: int = 0
    outages: int = 0  # database restarts (PostgreSQL): every daemon's connections cut at once
    daemons: int = 1
    connections: int = 1  # each daemon's [outbound] concurrency
    temporary: int = 0  # 4xx answers to replies (the sender retried them)

    @property
    def duplicate_bound(self) -> int:
        """At most one duplicate per connection per crash (its email in flight), and per
        database restart one per connection of every daemon (the email whose mark was lost)."""
        return (self.crashes + self.outages * self.daemons) * self.connections

    @property
    def ok(self) -> bool:
        """Every acked reply posted once; every email delivered; duplicates within bound."""
        return (not self.acked_missing and not self.posted_twice and not self.emails_missing
                and self.emails_duplicated <= self.duplicate_bound)

    def line(self) -> str:
        """One line a run, for bench/crash.py."""
        return (f"replies sent {self.replies_sent} acked {self.replies_acked} found "
                f"{self.replies_found} | emails queued {self.emails_queued} delivered "
                f"{self.emails_delivered} duplicated {self.emails_duplicated} missing "
                f"{self.emails_missing} | crashes {self.crashes} x {self.connections} "
                f"connection(s){f' restarts {self.outages}' if self.outages else ''} "
                f"4xx {self.temporary} | escalations {self.escalations} | "
                f"{'OK' if self.ok else 'BROKEN'}")


class _Daemon:
    """`mailflow serve` in a subprocess; the port is read from its log line."""

    def __init__(self, config: Path) -> None:
        import subprocess
        import sys

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailflow.cli", "--config", str(config), "serve",
             "--port", "0", "--tick", "0.2"],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        self.port: int | None = None
        self.log: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 20
        while self.port is None:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("daemon did not start:\n" + "\n".join(self.log[-20:]))
            time.sleep(0.02)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line.rstrip())
            m = re.search(r"listening for replies on [\d.]+:(\d+)", line)
            if m:
                self.port = int(m.group(1))

    def kill(self) -> None:
        """kill -9, and reap it (a zombie still looks alive to the outbox's claim check)."""
        self.proc.send_signal(signal.SIGKILL)
        self.stop_reading()

    def stop(self) -> int:
        """SIGTERM; the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(30)
        self.stop_reading()
        return code

    def stop_reading(self) -> None:
        self.proc.wait(30)
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def run_crash_scenario(folder: Path, config: Path, sink: Sink, *, senders: int = 4,
                       replies_each: int = 50, recipients: int = 200, crashes: int = 3,
                       seed: int = 0, daemons: int = 1,
                       outage: Callable[[], None] | None = None,
                       escalation_due: bool = False) -> CrashReport:
    """Replies and a fan-out while the daemon is `kill -9`ed at random moments.

    `folder` holds `config`, whose relay is `sink` and whose contacts know bob@example.org;
    the incident is declared here, its start email fanning out to `recipients` people.
    With `daemons` > 1 (on PostgreSQL), sender n talks to daemon n mod `daemons`, and each
    crash kills one of them at random; `outage`, when given, is called once before the
    first crash, while replies are arriving (e.g. restarting the database server). With
    `escalation_due` the incident's first escalation (4 h) is made due at once, so that it
    falls due while the daemons are being killed: it must happen once and be delivered.
    """
    import random
    import smtplib
    from email.message import EmailMessage
    from email.policy import SMTP as SMTP_POLICY

    from . import incidents as inc
    from .app import Mailflow
    from .config import load_config
    from .models import Due, Entry, InMessage, OutMessage
    from .tokens import reply_address

    rng = random.Random(seed)
    cfg = load_config(config)
    app = Mailflow(cfg)
    now = datetime.now(timezone.utc)  # the daemon runs on the real clock
    incident = inc.declare(app, now, service="learn", severity="P1", impact="outage",
                           summary="crash test", lead="ana@example.org",
                           impacted=[f"user{i}@example.org" for i in range(recipients)])
    to = reply_address(cfg.reply_local, cfg.reply_domain, incident.id, cfg.secret)
    if escalation_due:
        first = Due.select().where((Due.incident == incident.id) & (Due.kind == "escalate")
                                   ).order_by(Due.due_at).first()
        assert first is not None, "the service escalates"
        Due.update(due_at=now).where(Due.id == first.id).execute()
    app.close()

    report = CrashReport(connections=cfg.outbound.concurrency, daemons=daemons)
    acked: set[str] = set()
    lock = threading.Lock()
    state: dict[str, Any] = {"daemons": [_Daemon(config) for _ in range(daemons)],
                             "stop": False}

    def sender(who: int) -> None:
        for i in range(replies_each):
            text = f"reply-{who}-{i}"
            msg = EmailMessage()
            msg["From"], msg["To"], msg["Subject"] = "bob@example.org", to, "Re: crash"
            msg["Message-ID"] = f"<{text}@crash.test>"
            # One reply in the whole run fans an update out to everyone, mid-crashes.
            msg.set_content(("send now\n\n" if (who, i) == (0, replies_each // 2) else "") + text)
            data = msg.as_bytes(policy=SMTP_POLICY)
            with lock:
                report.replies_sent += 1
            for _ in range(200):  # an MTA retries the same message until it gets a 250
                port = state["daemons"][who % daemons].port
                try:
                    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
                        smtp.sendmail("bob@example.org", [to], data)
                    with lock:
                        acked.add(text)
                    break
                except (OSError, smtplib.SMTPException) as exc:
                    if isinstance(exc, smtplib.SMTPResponseException) and \
                            400 <= exc.smtp_code < 500:
                        with lock:
                            report.temporary += 1
                    time.sleep(0.05)

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(senders)]
    for t in threads:
        t.start()
    for crash in range(crashes):
        time.sleep(rng.uniform(0.3, 1.2))
        if crash == 0 and outage is not None:
            outage()  # while the senders keep sending
            report.outages += 1
        victim = rng.randrange(daemons)
        state["daemons"][victim].kill()
        report.crashes += 1
        state["daemons"][victim] = _Daemon(config)
    for t in threads:
        t.join(120)

    # Let the last daemon drain the outbox, then stop it cleanly.
    app = Mailflow(cfg)
    deadline = time.monotonic() + 60
    while app.outbox.pending() and time.monotonic() < deadline:
        time.sleep(0.1)
    for daemon in state["daemons"]:
        exit_code = daemon.stop()
        if exit_code != 0:
            raise RuntimeError(f"daemon exited {exit_code} on SIGTERM")

    posted = [e.text for e in Entry.select().where(
        (Entry.incident == incident.id) & (Entry.kind == "update"))]
    counts: dict[str, int] = {}
    for text in posted:
        counts[text] = counts.get(text, 0) + 1
    report.replies_acked = len(acked)
    report.replies_found = len(counts)
    report.acked_missing = sorted(t for t in acked if t not in counts)
    report.posted_twice = sorted(t for t, n in counts.items() if n > 1)
    # Every posted reply has its raw message stored with it (nothing half-posted).
    raw_ids = {m.message_id for m in InMessage.select()}
    report.acked_missing += sorted(t for t in counts if f"<{t}@crash.test>" not in raw_ids)
    queued = {m.message_id for m in OutMessage.select()}
    got: dict[str, int] = {}
    for r in sink.received:
        mid = r.message["Message-ID"]
        got[mid] = got.get(mid, 0) + 1
    report.emails_queued = len(queued)
    report.emails_delivered = len(set(got) & queued)
    report.emails_missing = len(queued - set(got))
    report.emails_duplicated = sum(n - 1 for n in got.values())
    report.escalations = Entry.select().where(
        (Entry.incident == incident.id) & (Entry.kind == "escalation")).count()
    escalated = {m.message_id for m in OutMessage.select().where(
        (OutMessage.incident == incident.id) & (OutMessage.kind == "escalation"))}
    report.escalation_emails = len(escalated)
    report.escalation_emails_delivered = len(escalated & set(got))
    app.close()
    return report
