"""The HTTP listener of `mailflow serve`: alert webhooks in, one-click unsubscribes.

aiohttp in the daemon's own event loop. Webhooks need `Authorization: Bearer <[http] token>`;
the one-click unsubscribe (RFC 8058) is authorised by the signed token in its URL instead,
since a mail provider posts it. Database work runs in a worker thread, so a slow disk or a
storm of alerts never stalls SMTP.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import alerts
from .errors import MailflowError

if TYPE_CHECKING:
    from .app import Mailflow

log = logging.getLogger(__name__)
MAX_BODY = 1024 * 1024  # an Alertmanager group of hundreds of alerts fits well below this


class Listener:
    """The running HTTP server; `port` is the bound one (useful with port 0)."""

    def __init__(self, app: Mailflow, now: Callable[[], datetime],
                 on_queued: Callable[[], Any] | None = None) -> None:
        self.app = app
        self.now = now
        self.on_queued = on_queued
        self.port = 0
        self._runner: web.AppRunner | None = None

    def web_app(self) -> web.Application:
        """The routes."""
        application = web.Application(client_max_size=MAX_BODY)
        application.add_routes([
            web.post("/alerts/alertmanager", self._webhook("alertmanager")),
            web.post("/alerts/grafana", self._webhook("grafana")),
            web.post("/unsubscribe/{token}", self._unsubscribe),
            web.get("/unsubscribe/{token}", self._unsubscribe_page),
            web.get("/health", self._health),
        ])
        return application

    async def start(self) -> None:
        """Bind `[http] host:port` and serve in the running loop."""
        cfg = self.app.config.http
        self._runner = web.AppRunner(self.web_app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, cfg.host, cfg.port)
        await site.start()
        server = site._server  # aiohttp has no public accessor for the bound port
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else cfg.port
        log.info("listening for alerts on http://%s:%d", cfg.host, self.port)

    async def close(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()

    def _authorised(self, request: web.Request) -> bool:
        token = self.app.config.http.token
        given = request.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        return bool(token) and scheme.lower() == "bearer" and \
            hmac.compare_digest(value.strip().encode(), token.encode())

    def _webhook(self, source: str) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.Response:
            if not self._authorised(request):
                return _error(401, "missing or wrong bearer token: send "
                                   "`Authorization: Bearer <[http] token>`")
            try:
                payload = json.loads(await request.read())
            except (ValueError, UnicodeDecodeError):
                return _error(400, f"{source} webhook: the body is not JSON")
            except web.HTTPRequestEntityTooLarge:
                return _error(413, f"{source} webhook: body over {MAX_BODY} bytes")
            now = self.now()
            try:
                group = alerts.parse_webhook(payload, source)
                intake = await asyncio.to_thread(alerts.receive, self.app, group, now)
            except MailflowError as exc:
                log.warning("%s webhook refused: %s", source, exc)
                return _error(422, str(exc))
            log.info("%s alert %s: %s", source, group.key[:80], intake.line)
            if self.on_queued is not None:
                self.on_queued()  # the on-call email goes out now, not at the next tick
            ref = intake.incident.ref if intake.incident is not None else None
            return web.json_response({"status": intake.action, "incident": ref})
        return handle

    async def _unsubscribe(self, request: web.Request) -> web.Response:
        from . import subscribers

        token = request.match_info["token"]
        try:
            done = await asyncio.to_thread(subscribers.unsubscribe_token, self.app, token,
                                           self.now())
        except MailflowError as exc:
            return _error(400, str(exc))
        return web.Response(text=f"Unsubscribed: {done}\n" if done else "Already unsubscribed\n")

    async def _unsubscribe_page(self, request: web.Request) -> web.Response:
        """A person who opens the link gets a button: a GET never unsubscribes, since link
        scanners and previews fetch every URL of an email (RFC 8058)."""
        from html import escape
        from urllib.parse import quote

        token = quote(request.match_info["token"], safe="-")
        return web.Response(content_type="text/html", text=(
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            'content="width=device-width, initial-scale=1"><title>Unsubscribe</title></head>'
            '<body style="font:16px/1.5 sans-serif;max-width:40em;margin:2em auto;padding:0 1em">'
            f'<form method="post" action="{escape(token)}"><p>Stop the status update emails '
            'to this address?</p><input type="hidden" name="List-Unsubscribe" value="One-Click">'
            '<button type="submit">Unsubscribe</button></form></body></html>\n'))

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def start(app: Mailflow, now: Callable[[], datetime],
                on_queued: Callable[[], Any] | None = None) -> Listener | None:
    """Start the listener if `[http] enabled`; None otherwise."""
    if not app.config.http.enabled:
        return None
    listener = Listener(app, now, on_queued)
    await listener.start()
    return listener
