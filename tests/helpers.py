"""Test helpers shared by the test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import os
import re
import resource
import smtplib
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

from click.testing import CliRunner, Result

from mailflow import incidents as inc
from mailflow.app import Mailflow
from mailflow.cli import cli
from mailflow.inbound import Gate, InboundHandler, listen
from mailflow.models import Entry, Incident
from mailflow.replies import Command, Reply
from mailflow.replies.mime import _unflow
from mailflow.testing import Sink

from .conftest import T0


def wait_for(predicate, timeout: float = 15.0, what: str = "condition") -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Process:
    """A `mailflow serve` subprocess whose stderr is collected line by line."""

    def __init__(self, folder: Path, env: dict[str, str], open_files: int | None = None) -> None:
        self.lines: list[str] = []

        def limit() -> None:  # as systemd's default LimitNOFILE would
            if open_files is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailflow.cli", "--config", str(folder / "mailflow.toml"),
             "serve", "--port", "0", "--tick", "0.2"],
            env={**os.environ, **env}, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
            text=True, preexec_fn=limit if open_files is not None else None,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        wait_for(lambda: self.port is not None, what="the daemon to listen")

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    @property
    def port(self) -> int | None:
        for line in self.lines:
            m = re.search(r"listening for replies on 127\.0\.0\.1:(\d+)", line)
            if m:
                return int(m.group(1))
        return None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(15)
        self.reader.join(5)
        assert self.proc.stderr is not None
        self.proc.stderr.close()

    def logged(self, text: str) -> bool:
        return any(text in line for line in self.lines)


NOW = T0 + timedelta(minutes=20)  # when replies arrive, 20 minutes after the declaration


class Inbound:
    """mailflow's handler served on a free loopback port, with a fixed clock."""

    def __init__(self, app: Mailflow, max_size: int = 64 * 1024) -> None:
        self.now = NOW
        self.handler = InboundHandler(app, now=lambda: self.now)
        self.server = Sink(handler=self.handler, data_size_limit=max_size)

    def send(self, msg: EmailMessage | bytes, to: str, mail_from: str = "bob@example.org"
             ) -> tuple[int, bytes]:
        """Send over SMTP; returns the DATA answer (or the refusal)."""
        with smtplib.SMTP("127.0.0.1", self.server.port, timeout=10) as smtp:
            smtp.ehlo()
            code, answer = smtp.mail(mail_from)
            assert code == 250
            code, answer = smtp.rcpt(to)
            if code != 250:
                smtp.rset()
                return code, answer
            data = msg if isinstance(msg, bytes) else msg.as_bytes(policy=SMTP)
            try:
                code, answer = smtp.data(data)
            except smtplib.SMTPDataError as exc:
                return exc.smtp_code, exc.smtp_error
            return code, answer


def declare_incident(app: Mailflow, **fields: object) -> Incident:
    """INC-n for the `learn` service, led by ana@example.org, declared at T0."""
    values: dict[str, object] = dict(
        service="learn", severity="P1", impact="outage", summary="Learn platform returns 502",
        impacted=[], lead="ana@example.org", author="ana@example.org")
    values.update(fields)
    return inc.declare(app, T0, **values)  # type: ignore[arg-type]


class InboundServer:
    """mailflow's inbound server exactly as the daemon runs it (`listen`: every limit of
    [inbound]), on its own event loop in a thread, with a clock the test sets."""

    def __init__(self, app: Mailflow, now: datetime, apply_after: bool = False) -> None:
        self.app = app
        self.now = now
        self.handler = InboundHandler(app, now=lambda: self.now, apply_after=apply_after)
        self.gate = Gate(app.config.inbound)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self.port = 0

    def __enter__(self) -> InboundServer:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            listen(self.app, self.handler, "127.0.0.1", 0, self.gate), self.loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            await self.gate.close_all()
            await self._server.wait_closed()
        asyncio.run_coroutine_threadsafe(close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.handler.close()
        self.loop.close()

    def call(self, fn: Callable[[], object]) -> object:
        """Run `fn` on the server's loop and return its result (reads the gate safely)."""
        async def run() -> object:
            return fn()
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def send(self, msg: EmailMessage | bytes, to: str | list[str],
             mail_from: str = "bob@example.org") -> tuple[int, bytes]:
        """One SMTP transaction; the DATA answer, or the first refused RCPT's."""
        with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as smtp:
            smtp.ehlo()
            code, answer = smtp.mail(mail_from)
            assert code == 250, answer
            for rcpt in [to] if isinstance(to, str) else to:
                code, answer = smtp.rcpt(rcpt)
                if code != 250:
                    return code, answer
            data = msg if isinstance(msg, bytes) else msg.as_bytes(policy=SMTP)
            try:
                return smtp.data(data)
            except smtplib.SMTPDataError as exc:
                return exc.smtp_code, exc.smtp_error


def message(body: str, sender: str = "Bob Stone <bob@example.org>", message_id: str = "",
            subject: str = "Re: [INC-1] ISC Learn Platform: outage") -> EmailMessage:
    """A plain reply or declaration."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "incidents@example.org"
    msg["Subject"] = subject
    msg["Message-ID"] = message_id or f"<{abs(hash((body, sender)))}@client.example>"
    msg.set_content(body)
    return msg


# --- moved from the test modules that first needed them ---


def assert_clean(reply: Reply) -> None:
    """Invariants every parse result keeps, whatever the input."""
    for value in (reply.sender, reply.sender_name, reply.subject, reply.message_id, reply.reason):
        assert isinstance(value, str)
        assert "\r" not in value and "\n" not in value
        assert not re.search(r"[\x00-\x1f\x7f]", value)
    assert "\r" not in reply.text
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f\ud800-\udfff]", reply.text)
    assert reply.sender == reply.sender.lower()
    assert not (reply.is_auto_reply and reply.is_bounce)
    assert all(isinstance(c, Command) for c in reply.commands)
    assert all(r == r.lower() and "@" in r for r in reply.bounced_recipients)


def send_reply(port: int, to: str, body: str, sender: str = "bob@example.org",
               timeout: float = 10) -> int:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, "Re: [INC-1]"
    msg["Message-ID"] = f"<{time.monotonic_ns()}@client.example>"
    msg.set_content(body)
    with smtplib.SMTP("127.0.0.1", port, timeout=timeout) as smtp:
        try:
            smtp.sendmail(sender, [to], msg.as_bytes(policy=SMTP))
        except smtplib.SMTPDataError as exc:
            return exc.smtp_code
    return 250


DECLARE = ["declare", "--service", "learn", "--severity", "P1", "--impact", "outage",
           "--summary", "Learn platform returns 502", "--impacted", "student-council@example.org",
           "--eta", "unknown: depends on the database restore",
           "--started", "Restarting the DB primary", "--next-steps", "Check replication lag",
           "--lead", "ana@example.org"]


def run(folder: Path, *args: str, now: str = "2026-11-24T10:00:00Z") -> Result:
    env = {"MAILFLOW_CONFIG": str(folder / "mailflow.toml"), "MAILFLOW_NOW": now,
           "MAILFLOW_USER": "ana@example.org"}
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def reply_to_address(app: Mailflow, incident: Incident) -> str:
    from mailflow.tokens import reply_address
    cfg = app.config
    return reply_address(cfg.reply_local, cfg.reply_domain, incident.id, cfg.secret)


def reply_to(sink: Sink, rcpt: str = "ana@example.org") -> str:
    return by_rcpt(sink)[rcpt][0]["Reply-To"]


def reply(body: str, sender: str = "Bob Stone <bob@example.org>", **headers: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "incidents@example.org"
    msg["Subject"] = "Re: [INC-1] ISC Learn Platform: outage"
    msg["Message-ID"] = f"<{abs(hash((body, sender, tuple(headers.items()))))}@client.example>"
    for key, value in headers.items():
        msg[key.replace("_", "-")] = value
    msg.set_content(body)
    return msg


def posted(incident: Incident, kind: str = "update") -> list[Entry]:
    return list(Entry.select().where((Entry.incident == incident) & (Entry.kind == kind))
                .order_by(Entry.id))


ORANGE = "#ffe8cc"  # the .new background in templates/base.html


GREEN = "#dafbe1"  # the .green background


def declare(app: Mailflow, **kw: object) -> Incident:
    fields = dict(service="learn", severity="P1", impact="outage",
                  summary="Learn platform returns 502", impacted=["student-council@example.org"],
                  eta="unknown: depends on the database restore",
                  started="Restarting the DB primary", next_steps="Check replication lag",
                  lead="ana@example.org", author="ana@example.org")
    fields.update(kw)
    return inc.declare(app, T0, **fields)  # type: ignore[arg-type]


def html_of(msg: EmailMessage) -> str:
    part = msg.get_body(("html",))
    assert part is not None
    return part.get_content()


def text_of(msg: EmailMessage) -> str:
    """The plain-text part as a reader shows it: format=flowed soft breaks joined."""
    part = msg.get_body(("plain",))
    assert part is not None
    content = part.get_content()
    if part.get_param("format") != "flowed":
        return content
    joined = _unflow(content.replace("\r\n", "\n"), delsp=False)
    return joined.replace("\n", "\r\n") if "\r\n" in content else joined


def by_rcpt(sink: Sink) -> dict[str, list[EmailMessage]]:
    out: dict[str, list[EmailMessage]] = {}
    for r in sink.received:
        assert len(r.rcpt_tos) == 1, "mail merge: one message per recipient"
        out.setdefault(r.rcpt_tos[0], []).append(r.message)
    return out


def highlighted(html: str, colour: str) -> list[str]:
    """Texts of the elements whose inlined style carries `colour` (premailer inlined it)."""
    found = []
    for m in re.finditer(r'<(tr|li|p|div)[^>]*style="[^"]*' + re.escape(colour) +
                         r'[^"]*"[^>]*>(.*?)</\1>', html, re.S):
        found.append(re.sub(r"<[^>]+>", " ", m.group(2)))
    return found
