"""The application object: config, database, contacts, templates and outbox, opened once."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

from .addresses import rules_of
from .config import Config, load_config
from .models import open_database

if TYPE_CHECKING:
    from .contacts import Contacts
    from .outbox import Outbox, Report, Transport
    from .render import Renderer

log = logging.getLogger(__name__)


class Mailflow:
    """Everything a command or the daemon needs; CLI commands are thin wrappers over it."""

    def __init__(self, config: Config, contacts: Contacts | None = None,
                 transport_factory: type | None = None) -> None:
        self.config = config
        self.db = open_database(config.database)
        if contacts is not None:
            self.contacts = contacts
        # Tests and benchmarks pass a factory for an in-memory or switchable transport.
        self._transport_factory = transport_factory

    # Contacts, templates and the outbox are opened on first use: `mailflow list` and `show`
    # read only the database, and should not pay for ruamel.yaml, Jinja2 or aiosmtplib.
    @cached_property
    def contacts(self) -> Contacts:
        """The people, lists and services of contacts.yaml (empty if there is no file)."""
        from .contacts import empty_contacts, load_contacts

        if not self.config.contacts.exists():
            return empty_contacts()
        return load_contacts(self.config.contacts, rules_of(self.config))

    @cached_property
    def renderer(self) -> Renderer:
        """The email templates: operator overrides first, then the built-in ones."""
        from .render import Renderer

        return Renderer(self.config.templates)

    @cached_property
    def outbox(self) -> Outbox:
        """The durable queue of outgoing mail."""
        from .outbox import Outbox

        return Outbox(self.db, self.config.outbound.retry_for)

    def reload(self) -> None:
        """Re-read config, contacts and templates; on any error keep the old ones and raise.

        The database and the inbound address are kept: they cannot change under a running
        daemon (restart it for those).
        """
        config = self.config
        if config.path is not None:
            config = replace(load_config(config.path), database=self.config.database,
                             inbound=self.config.inbound)
        from .contacts import load_contacts
        from .render import Renderer

        contacts = load_contacts(config.contacts, rules_of(config))
        renderer = Renderer(config.templates)
        renderer.check()
        self.config, self.contacts, self.renderer = config, contacts, renderer
        self.outbox.retry_for = config.outbound.retry_for

    def transports(self) -> list[Transport]:
        """One transport per configured concurrent connection."""
        from .outbox import make_transport

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
        from . import statuspage

        statuspage.flush(self, now)  # after the change that queued this mail has committed
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
        import asyncio

        return asyncio.run(self.deliver(now, on_attempt=on_attempt))

    def close(self) -> None:
        """Close the database (and the outbox's connections, if it was opened)."""
        from . import statuspage

        statuspage.wait(self)  # a CLI command lets its status page upload finish
        if "outbox" in self.__dict__:
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
