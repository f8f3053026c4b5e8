"""The aiosmtpd handler for replies: RCPT checks the signed token, DATA parses, commits, 250."""

from __future__ import annotations

import hmac
import logging
import re
import ssl
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from . import clock
from .models import Incident
from .posting import accept_declaration, accept_reply
from .replies import parse_reply
from .tokens import split_address, verify

if TYPE_CHECKING:
    from .app import Mailflow

log = logging.getLogger(__name__)

_UNPRINTABLE = re.compile(r"[^\x20-\x7e]+")


def smtp_answer(code: int, message: str) -> str:
    """One SMTP reply line: printable 7-bit ASCII, no line break, at most 512 octets.

    The message may name the sender, and `böb@example.org` is a valid address: without
    SMTPUTF8 aiosmtpd cannot encode it and drops the session with "500 Error:
    (UnicodeEncodeError)"; with it, UTF-8 goes to clients that never asked for it.
    """
    text = message.encode("ascii", "backslashreplace").decode("ascii")
    return f"{code} {_UNPRINTABLE.sub(' ', text).strip()}"[:510]


def make_protocol(app: Mailflow, handler: InboundHandler) -> SMTP:
    """The aiosmtpd protocol for one connection, with [inbound]'s size, TLS and AUTH."""
    cfg = app.config.inbound
    tls_context = None
    if cfg.tls_cert and cfg.tls_key:
        tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls_context.load_cert_chain(str(cfg.tls_cert), str(cfg.tls_key))
    authenticator = None
    if cfg.username:
        def authenticator(server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                          auth_data: Any) -> AuthResult:
            ok = isinstance(auth_data, LoginPassword) and hmac.compare_digest(
                auth_data.login, cfg.username.encode()) and hmac.compare_digest(
                auth_data.password, cfg.password.encode())
            return AuthResult(success=ok, handled=False)
    return SMTP(handler, data_size_limit=cfg.max_size, hostname=app.config.reply_domain,
                ident="mailflow", enable_SMTPUTF8=True, tls_context=tls_context,
                require_starttls=cfg.require_tls, authenticator=authenticator,
                auth_required=bool(cfg.username),
                # AUTH without TLS is only accepted by the config on loopback (config.py).
                auth_require_tls=tls_context is not None)


class InboundHandler:
    """Turns replies to `local+TOKEN@domain` into updates; knows nothing of sockets."""

    def __init__(self, app: Mailflow, now: Callable[[], datetime] = clock.now,
                 on_posted: Callable[[], Any] | None = None) -> None:
        self.app = app
        self.now = now
        self.on_posted = on_posted  # wakes the outbox sender when a reply queued mail
        self.in_flight = 0  # DATA transactions being committed; SIGTERM waits for them

    def is_base(self, address: str) -> bool:
        """The reply address without a token: where incidents are declared by email."""
        cfg = self.app.config
        local, token, domain = split_address(address)
        return token is None and local == cfg.reply_local.lower() \
            and domain == cfg.reply_domain.lower()

    def incident_for(self, address: str) -> Incident | None:
        """The open-or-not incident a recipient address names, if its token is valid."""
        cfg = self.app.config
        local, token, domain = split_address(address)
        if local != cfg.reply_local.lower() or domain != cfg.reply_domain.lower() or not token:
            return None
        incident_id = verify(token, cfg.secrets(self.now()))
        if incident_id is None:
            return None
        return Incident.get_or_none(Incident.id == incident_id)

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        """550 before any DATA for anything but a valid signed incident address."""
        if self.is_base(address):
            envelope.rcpt_tos.append(address)
            return "250 OK"
        incident = self.incident_for(address)
        if incident is None:
            log.info("RCPT %s refused: not a valid incident address", address)
            return "550 5.1.1 unknown recipient: not a valid incident reply address"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Parse the reply, apply it, commit, and only then answer 250."""
        self.in_flight += 1
        try:
            return self._data(envelope)
        except Exception:  # never let one bad message take the server down
            log.exception("reply from %s could not be processed", envelope.mail_from)
            return "451 4.3.0 could not process the message; try again later"
        finally:
            self.in_flight -= 1

    def _data(self, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        mail_from = envelope.mail_from or ""
        reply = parse_reply(raw, envelope_from=mail_from)
        now = self.now()
        answers = []
        before = self.app.outbox.queued
        for address in envelope.rcpt_tos:
            if self.is_base(address):
                outcome = accept_declaration(self.app, reply, raw, mail_from, now)
                log.info("declaration from %s: %s", reply.sender or "<>", outcome.message)
                answers.append((outcome.code, outcome.message))
                continue
            incident = self.incident_for(address)
            if incident is None:  # deleted between RCPT and DATA
                answers.append((550, "5.1.1 unknown incident"))
                continue
            outcome = accept_reply(self.app, incident, reply, raw, mail_from, now)
            log.info("reply from %s to %s: %s", reply.sender or "<>", incident.ref,
                     outcome.outcome)
            answers.append((outcome.code, outcome.message))
        if self.app.outbox.queued != before and self.on_posted is not None:
            self.on_posted()  # the reply queued mail (send now, resolved...): send it at once
        # One answer for the whole DATA: success if any incident took it.
        best = min(answers, default=(550, "5.1.1 no recipient"), key=lambda a: a[0])
        return smtp_answer(*best)
