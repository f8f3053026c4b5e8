"""The application object: config, database, contacts, templates and outbox, opened once."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

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
            contacts = load_contacts(config.contacts) if config.contacts.exists() else empty_contacts()
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
        contacts = load_contacts(config.contacts)
        renderer = Renderer(config.templates)
        renderer.check()
        self.config, self.contacts, self.renderer = config, contacts, renderer
        self.outbox.retry_for = config.outbound.retry_for

    def transports(self) -> list[Transport]:
        """One transport per configured concurrent connection."""
        n = self.config.outbound.concurrency if self.config.outbound.host else 1
        if self._transport_factory is not None:
            return [self._transport_factory() for _ in range(n)]
        return [make_transport(self.config.outbound, self.config.maildir) for _ in range(n)]

    async def deliver(self, now: datetime, clock: Callable[[], datetime] | None = None,
                      should_stop: Callable[[], bool] | None = None) -> Report:
        """Send everything in the outbox that is due at `now` (see Outbox.deliver)."""
        transports = self.transports()
        try:
            return await self.outbox.deliver(transports[0], now, len(transports), transports[1:],
                                             clock=clock, should_stop=should_stop)
        finally:
            for t in transports:
                await t.close()

    def deliver_now(self, now: datetime) -> Report:
        """Synchronous wrapper for the CLI."""
        return asyncio.run(self.deliver(now))

    def close(self) -> None:
        """Close the database."""
        self.outbox.close()
        self.db.close()
