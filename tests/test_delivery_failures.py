"""A failed message is not a dead recipient; the lead hears once per communication."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest

from mailflow import incidents as inc
from mailflow import outbox
from mailflow.app import Mailflow
from mailflow.models import OutMessage, Recipient
from mailflow.scheduler import tick
from mailflow.testing import SinkHandler

from .conftest import T0
from .helpers import declare, text_of


@pytest.mark.parametrize(("code", "message", "stage", "kind"), [
    (550, "5.1.1 <x@example.org>: user unknown", "RCPT", outbox.PermanentFailure),
    (550, "Requested action not taken: mailbox unavailable", "DATA", outbox.PermanentFailure),
    (552, "5.3.4 Message size exceeds fixed limit", "DATA", outbox.MessageRefused),
    (552, "Too much mail data", "RCPT", outbox.MessageRefused),
    (554, "Transaction failed", "DATA", outbox.MessageRefused),
    (550, "5.7.1 Message rejected as spam", "DATA", outbox.MessageRefused),
    (550, "5.6.0 Content refused", "RCPT", outbox.MessageRefused),
    (553, "mailbox name not allowed", "RCPT", outbox.PermanentFailure),
    (451, "4.3.0 try later", "DATA", outbox.TemporaryFailure),
    (600, "what is this", "RCPT", outbox.TemporaryFailure),
    (199, "odd", "DATA", outbox.TemporaryFailure),
])
def test_refusals_are_classified(code: int, message: str, stage: str, kind: type) -> None:
    assert type(outbox.classify_refusal(code, message, stage)) is kind


@dataclass
class Picky(SinkHandler):
    """A relay that refuses some recipients at RCPT and some messages at DATA."""

    at_data: dict[str, str] = field(default_factory=dict)  # recipient -> DATA reply
    at_rcpt: dict[str, str] = field(default_factory=dict)  # recipient -> RCPT reply

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any,
                          address: str, rcpt_options: list[str]) -> str:
        if address.lower() in self.at_rcpt:
            return self.at_rcpt[address.lower()]
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        for rcpt in envelope.rcpt_tos:
            if rcpt.lower() in self.at_data:
                return self.at_data[rcpt.lower()]
        return await super().handle_DATA(server, session, envelope)


def test_a_refused_message_leaves_the_recipient_and_the_lead_hears_once(app: Mailflow,
                                                                         sink: Any) -> None:
    handler = Picky(at_data={"ops-team@example.org": "552 5.3.4 Message size exceeds limit"},
                    at_rcpt={"student-council@example.org": "550 5.1.1 user unknown",
                             "gone@example.org": "550 5.1.1 user unknown"})
    sink.handler = handler
    incident = declare(app, impacted=["student-council@example.org", "gone@example.org"])
    tick(app, T0)
    starts = [r.rcpt_tos[0] for r in sink.received if r.message["X-Mailflow-Kind"] == "start"]
    assert sorted(starts) == ["ana@example.org"]
    status = {r.email: r.status for r in Recipient.select()}
    assert status["ops-team@example.org"] == "active", "a refused message is not a dead address"
    assert status["student-council@example.org"] == status["gone@example.org"] == "failed"
    tick(app, T0 + timedelta(minutes=1))
    notices = [r for r in sink.received if r.message["X-Mailflow-Kind"] == "notice"]
    assert len(notices) == 1, "one notice per communication, not one per recipient"
    body = text_of(notices[0].message)
    assert "ops-team@example.org: 552 5.3.4 Message size exceeds limit" in body
    assert "student-council@example.org: 550 5.1.1 user unknown" in body
    assert "gone@example.org: 550 5.1.1 user unknown" in body
    assert "did not reach 3 recipients" in notices[0].message["Subject"]

    # The next communication is still tried for the refused message's recipient.
    handler.at_data.clear()
    incident = inc.get(incident.ref) if hasattr(inc, "get") else incident
    inc.post_update(app, incident, "Replica promoted", "ana@example.org", T0 + timedelta(minutes=5))
    inc.send_update(app, incident, T0 + timedelta(minutes=5))
    tick(app, T0 + timedelta(minutes=5))
    updates = [r.rcpt_tos[0] for r in sink.received if r.message["X-Mailflow-Kind"] == "update"]
    assert "ops-team@example.org" in updates
    assert "student-council@example.org" not in updates
    tick(app, T0 + timedelta(minutes=6))
    assert len([r for r in sink.received if r.message["X-Mailflow-Kind"] == "notice"]) == 1, \
        "no failure in the update: no new notice"


def test_a_reply_code_outside_the_range_is_temporary(app: Mailflow, sink: Any) -> None:
    sink.handler = Picky(at_rcpt={"ops-team@example.org": "600 what is this"})
    declare(app, impacted=[])
    tick(app, T0)
    [msg] = OutMessage.select().where(OutMessage.recipient == "ops-team@example.org")
    assert msg.status == "queued" and "600" in msg.last_error
    assert Recipient.get(Recipient.email == "ops-team@example.org").status == "active"
