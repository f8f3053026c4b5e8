"""Test helpers shared by the test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import smtplib
import threading
from collections.abc import Callable
from datetime import datetime
from email.message import EmailMessage
from email.policy import SMTP

from mailflow import incidents as inc
from mailflow.app import Mailflow
from mailflow.inbound import Gate, InboundHandler, listen
from mailflow.models import Incident

from .conftest import T0


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

    def __init__(self, app: Mailflow, now: datetime) -> None:
        self.app = app
        self.now = now
        self.handler = InboundHandler(app, now=lambda: self.now)
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
