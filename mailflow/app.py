"""The application object: config, database, contacts, templates and outbox, opened once."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

from .addresses import rules_of
from .config import Config, load_config
from .contacts import Contacts, empty_contacts, load_contacts
from .models import open_database
from .outbox import Outbox, Report, Transport, make_transport
from .render import Renderer

log = logging.getLogger(__name__)


class Mailflow:
    """Everything a command or the daemon needs; CLI commands are thin wrappers over it."""

    def __init__(self, config: Config, contacts: Contacts | None = None,
                 transport_factory: type | None = None) -> None:
        self.config = config
        self.db = open_database(config.database)
        if contacts is None:
            contacts = load_contacts(config.contacts, rules_of(config)) \
                if config.contacts.exists() else empty_contacts()
        self.contacts = contacts
        self.renderer = Renderer(config.templates)
        self.outbox = Outbox(self.db, config.outbound.retry_for)
        # Tests and benchmarks pass a factory for an in-memory or switchable transport.
        self._transport_factory = transport_factory

    def reload(self) -> None:
        """Re-read config, contacts and templates; on any error keep the old ones and raise.

        The database and the inbound address are kept: they cannot change under a running
        daemon (restart it for those).
        """
        config = self.config
        if config.path is not None:
            config = replace(load_config(config.path), database=self.config.database,
                             inbound=self.config.inbound)
        contacts = load_contacts(config.contacts, rules_of(config))
        renderer = Renderer(config.templates)
        renderer.check()
        self.config, self.contacts, self.renderer = config, contacts, renderer
        self.outbox.retry_for = config.outbound.retry_for

    def transports(self) -> list[Transport]:
        """One transport per configured concurrent connection."""
        n = self.config.outbound.concurrency if self.config.outbound.host else 1
        if self._transport_factory is not None:
            return [self._transport_factory() for _ in range(n)]
        from .oauth2 import token_source
        token = token_source(self.config)
        return [make_transport(self.config.outbound, self.config.maildir, token)
                for _ in range(n)]

    async def deliver(self, now: datetime, clock: Callable[[], datetime] | None = None,
                      should_stop: Callable[[], bool] | None = None,
                      on_attempt: Callable[[], None] | None = None) -> Report:
        """Send everything in the outbox that is due at `now` (see Outbox.deliver).

        `on_attempt` is called after each message handed to a transport (a progress bar).
        """
        transports = self.transports()
        if on_attempt is not None:
            transports = [Counted(t, on_attempt) for t in transports]
        try:
            return await self.outbox.deliver(transports[0], now, len(transports), transports[1:],
                                             clock=clock, should_stop=should_stop)
        finally:
            for t in transports:
                await t.close()

    def deliver_now(self, now: datetime, on_attempt: Callable[[], None] | None = None) -> Report:
        """Synchronous wrapper for the CLI."""
        return asyncio.run(self.deliver(now, on_attempt=on_attempt))

    def close(self) -> None:
        """Close the database."""
        self.outbox.close()
        self.db.close()


class Counted:
    """A transport that calls `on_attempt` after every message it tried to send."""

    def __init__(self, inner: Transport, on_attempt: Callable[[], None]) -> None:
        self.inner, self.on_attempt = inner, on_attempt

    async def send(self, envelope_from: str, recipient: str, raw: bytes, **kwargs: Any) -> None:
        """Send through the wrapped transport, then count the attempt (sent or not)."""
        try:
            await self.inner.send(envelope_from, recipient, raw, **kwargs)
        finally:
            self.on_attempt()

    async def close(self) -> None:
        """Close the wrapped transport."""
        await self.inner.close()
