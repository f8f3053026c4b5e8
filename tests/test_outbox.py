"""Relay outages: refuse, then 4xx, then recover. Nothing lost, nothing doubled, in order."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from pathlib import Path

from mailflow import incidents as inc
from mailflow.app import Mailflow
from mailflow.config import load_config
from mailflow.models import Entry, OutMessage
from mailflow.testing import Sink

from .conftest import T0, write_config
from .test_lifecycle import declare


def at(minutes: float) -> object:
    return T0 + timedelta(minutes=minutes)


def delays(message_id: int, sink_app: Mailflow, moments: list[float]) -> list[timedelta]:
    """Deliver at each moment; return the retry delay the outbox chose after each."""
    out = []
    for m in moments:
        sink_app.deliver_now(at(m))
        msg = OutMessage.get_by_id(message_id)
        out.append(msg.next_attempt_at - at(m))
    return out


def test_outage_then_4xx_then_recovery(app: Mailflow, sink: Sink) -> None:
    sink.refuse()
    incident = declare(app)  # start: 3 recipients
    report = app.deliver_now(T0)
    assert report.sent == 0 and report.retrying == 3
    inc.post_update(app, incident, "Still down", "ana@example.org", at(0.5))
    inc.send_update(app, incident, at(0.5))  # update: queued behind the start, per recipient
    report = app.deliver_now(at(0.5))
    assert report.sent == 0 and report.retrying == 0, "the update waits behind the start"

    # While the relay cannot be reached, the queue is probed every minute; that is not an
    # attempt of each message, so a short blip does not push everything back 30 minutes.
    first = OutMessage.select().order_by(OutMessage.id).first()
    assert first.next_attempt_at == at(1) and first.attempts == 0
    # The relay answers 4xx: backoff 1, 5, 15 minutes, then never faster than every 30
    # minutes (RFC 5321 4.5.4).
    sink.accept("tempfail")
    seen = delays(first.id, app, [1, 2, 7, 22, 52])
    assert seen == [timedelta(minutes=m) for m in (1, 5, 15, 30, 30)]
    assert sink.received == []
    assert OutMessage.select().where(OutMessage.status == "sent").count() == 0

    sink.accept("accept")
    report = app.deliver_now(at(82))
    assert report.failed == 0
    app.deliver_now(at(200))  # anything that was behind a retry
    per_rcpt: dict[str, list[str]] = {}
    for r in sink.received:
        per_rcpt.setdefault(r.rcpt_tos[0], []).append(r.message["X-Mailflow-Kind"])
    assert per_rcpt == {a: ["start", "update"] for a in
                        ("ana@example.org", "ops-team@example.org", "student-council@example.org")}
    ids = Counter(r.message["Message-ID"] for r in sink.received)
    assert max(ids.values()) == 1, "nothing doubled"
    assert OutMessage.select().where(OutMessage.status != "sent").count() == 0


def test_giving_up_records_the_failure_and_tells_the_lead(tmp_path: Path, sink: Sink) -> None:
    write_config(tmp_path, sink.port)
    cfg = tmp_path / "mailflow.toml"
    cfg.write_text(cfg.read_text() + 'retry_for = "2h"\n')
    app = Mailflow(load_config(cfg))
    sink.refuse()
    declare(app, impacted=[])
    for minutes in range(0, 151, 10):  # a 2.5 h outage, ticking every 10 min
        app.deliver_now(at(minutes + 1))
    failed = OutMessage.select().where(OutMessage.status == "failed")
    assert sorted(m.recipient for m in failed) == ["ana@example.org", "ops-team@example.org"]
    assert all("gave up after 2 h" in m.last_error for m in failed)
    failures = Entry.select().where(Entry.kind == "failure")
    assert failures.count() == 2
    sink.accept()
    app.deliver_now(at(200))
    told = [r for r in sink.received if r.message["X-Mailflow-Kind"] == "notice"]
    assert [r.rcpt_tos[0] for r in told] == ["ana@example.org"], \
        "the lead hears of ops-team's failure (not of their own)"
    assert "ops-team@example.org failed" in told[0].message.get_body(("plain",)).get_content()
    app.close()


def test_a_crash_between_claim_and_send_resends_after_the_lease(app: Mailflow,
                                                                sink: Sink) -> None:
    declare(app, impacted=[])
    claimed = app.outbox.claim(T0)  # this sender "dies" here, before sending
    assert len(claimed) == 2
    assert app.deliver_now(at(1)).sent == 0, "another sender leaves claimed mail alone"
    assert app.deliver_now(at(5)).sent == 2, "after the lease, the mail goes out"
    assert len(sink.received) == 2


def test_a_reminder_held_up_past_its_deadline_is_dropped(app: Mailflow, sink: Sink) -> None:
    from mailflow.scheduler import tick

    declare(app, impacted=[])
    app.deliver_now(T0)
    sink.refuse()
    tick(app, at(50))  # the reminder for the 11:00 mark is queued; the relay is down
    sink.accept()
    app.deliver_now(at(61))
    kinds = [r.message["X-Mailflow-Kind"] for r in sink.received]
    assert "reminder" not in kinds, "never a reminder after the deadline"
    assert OutMessage.get(OutMessage.kind == "reminder").status == "expired"


def test_one_unsendable_message_does_not_stall_the_others(app: Mailflow, sink: Sink) -> None:
    class Picky:
        """A transport that chokes on one recipient with an unexpected error."""

        def __init__(self) -> None:
            self.sent: list[str] = []

        async def send(self, envelope_from: str, recipient: str, raw: bytes) -> None:
            if recipient == "ana@example.org":
                raise UnicodeEncodeError("ascii", "x", 0, 1, "boom")
            self.sent.append(recipient)

        async def close(self) -> None:
            pass

    declare(app, impacted=["student-council@example.org"])
    picky = Picky()
    import asyncio

    report = asyncio.run(app.outbox.deliver(picky, T0))
    assert sorted(picky.sent) == ["ops-team@example.org", "student-council@example.org"]
    assert report.failed == 1
    assert OutMessage.select().where(OutMessage.status == "sending").count() == 0
