"""A real SMTP sink on loopback (aiosmtpd) for tests, benchmarks and trying mailflow out.

It runs its own event loop in a thread, binds port 0 with `loop.create_server` (aiosmtpd's
Controller connects back to the configured port, which port 0 breaks), and can be switched
between accepting, refusing connections and answering 4xx/5xx: a relay outage on demand.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session


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
                 data_size_limit: int | None = None) -> None:
        self.host = host
        self.port = 0
        # Any aiosmtpd handler can be served this way (tests serve mailflow's InboundHandler).
        self.handler = handler if handler is not None else SinkHandler()
        self.data_size_limit = data_size_limit
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
        return SMTP(self.handler, hostname="sink.local", data_size_limit=self.data_size_limit)

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
