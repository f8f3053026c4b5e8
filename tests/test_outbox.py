"""Relay outages: refuse, then 4xx, then recover. Nothing lost, nothing doubled, in order.

Also the bookkeeping that overlaps sending: `sent` marks committed before the next DATA,
batches claimed ahead, and bodies encoded once for all recipients.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import sqlite3
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from mailflow import incidents as inc
from mailflow import outbox
from mailflow.app import Mailflow
from mailflow.config import Outbound, load_config
from mailflow.models import Entry, OutMessage
from mailflow.render import _Markers, _Part, _qp
from mailflow.scheduler import tick
from mailflow.testing import Sink, SinkHandler

from .conftest import BACKENDS, T0, write_config
from .helpers import declare, text_of


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
    tick(app, at(200))  # the failure notice is a due job of the scheduler
    told = [r for r in sink.received if r.message["X-Mailflow-Kind"] == "notice"]
    assert [r.rcpt_tos[0] for r in told] == ["ana@example.org"], \
        "the lead hears of ops-team's failure (not of their own)"
    assert "ops-team@example.org: gave up after 2 h" in \
        text_of(told[0].message)
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
    class Picky(Recorder):
        """A transport that chokes on one recipient with an unexpected error."""

        async def send(self, envelope_from: str, recipient: str, raw: bytes, *,
                       before_data: Callable[[], Awaitable[None]] | None = None) -> None:
            if recipient == "ana@example.org":
                raise UnicodeEncodeError("ascii", "x", 0, 1, "boom")
            await super().send(envelope_from, recipient, raw, before_data=before_data)

    declare(app, impacted=["student-council@example.org"])
    picky = Picky()
    import asyncio

    report = asyncio.run(app.outbox.deliver(picky, T0))
    assert sorted(picky.sent) == ["ops-team@example.org", "student-council@example.org"]
    assert report.failed == 1
    assert OutMessage.select().where(OutMessage.status == "sending").count() == 0


MANY = [f"user{i}@example.org" for i in range(10)]  # with ana and ops-team: 12 recipients


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of 4, the next claimed when 2 are left: a dozen emails cross every path."""
    monkeypatch.setattr(outbox, "BATCH", 4)
    monkeypatch.setattr(outbox, "PREFETCH_AT", 2)


@dataclass
class MarkChecker(SinkHandler):
    """A sink that, as each message's DATA ends, checks that every earlier message on the
    same connection is marked sent (and counts those of other connections that are not)."""

    database: Path = Path()
    unmarked: list[tuple[int, int]] = field(default_factory=list)  # (accepted, marked)
    by_connection: dict[int, list[str]] = field(default_factory=dict)  # Message-IDs
    others_unmarked: int = 0  # the most messages of other connections unmarked at a DATA

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        mine = self.by_connection.setdefault(id(session), [])
        with contextlib.closing(sqlite3.connect(self.database)) as db:
            marked = db.execute(
                "SELECT count(*) FROM outmessage WHERE status = 'sent' "
                "AND message_id IN (SELECT value FROM json_each(?))",
                (json.dumps(mine),)).fetchone()[0]
            everywhere = db.execute(
                "SELECT count(*) FROM outmessage WHERE status = 'sent'").fetchone()[0]
        if marked != len(mine):
            self.unmarked.append((len(mine), marked))
        self.others_unmarked = max(self.others_unmarked,
                                   len(self.received) - everywhere - (len(mine) - marked))
        found = re.search(rb"^Message-ID: (<[^>]+>)", envelope.original_content, re.M)
        assert found, "every outbox email has a Message-ID"
        mine.append(found.group(1).decode())
        return await super().handle_DATA(server, session, envelope)


@pytest.mark.parametrize("concurrency", [1, 2])
def test_each_sent_mark_is_committed_before_the_next_data(
        tmp_path: Path, small_batches: None, monkeypatch: pytest.MonkeyPatch,
        concurrency: int) -> None:
    # The mark of message k commits in the background while k+1's envelope goes out, but
    # before its DATA: a crash can only ever re-send the one message in flight on each
    # connection.
    mark = outbox.Outbox._mark_sent

    def slow_mark(self: outbox.Outbox, *args: Any) -> None:
        time.sleep(0.02)  # slower than the next MAIL FROM and RCPT TO: DATA must wait
        mark(self, *args)

    monkeypatch.setattr(outbox.Outbox, "_mark_sent", slow_mark)
    checker = MarkChecker()
    with Sink(handler=checker) as sink:
        extra = "" if concurrency == 2 else f"concurrency = {concurrency}\n"
        config = write_config(tmp_path, sink.port)
        config.write_text(config.read_text() + extra)  # [outbound] is the last table
        app = Mailflow(load_config(config))
        assert app.config.outbound.concurrency == concurrency  # 2: the default
        checker.database = app.config.database
        incident = declare(app, impacted=MANY)
        inc.post_update(app, incident, "Still down", "ana@example.org", at(1))
        inc.send_update(app, incident, at(1))  # a second message to each, queued behind
        report = app.deliver_now(at(1))
        app.close()
    assert report.sent == 24 and len(checker.received) == 24
    assert len(checker.by_connection) == concurrency, "each connection was used"
    assert checker.unmarked == []
    assert checker.others_unmarked <= concurrency - 1  # at most one in flight per connection


def test_batches_claimed_ahead_keep_each_recipients_order(app: Mailflow, sink: Sink,
                                                          small_batches: None) -> None:
    incident = declare(app, impacted=MANY)
    inc.post_update(app, incident, "Still down", "ana@example.org", at(1))
    inc.send_update(app, incident, at(1))
    inc.post_update(app, incident, "Better", "ana@example.org", at(2))
    inc.send_update(app, incident, at(2))
    assert app.deliver_now(at(2)).sent == 36, "what waited behind a claimed batch went too"
    per_rcpt: dict[str, list[str]] = {}
    for r in sink.received:
        per_rcpt.setdefault(r.rcpt_tos[0], []).append(text_of(r.message))
    assert len(per_rcpt) == 12
    for texts in per_rcpt.values():
        assert len(texts) == 3
        assert "Still down" not in texts[0] and "Better" not in texts[1] and "Better" in texts[2]
    assert OutMessage.select().where(OutMessage.status != "sent").count() == 0


def test_what_waits_behind_the_last_batch_goes_out_in_the_same_run(app: Mailflow, sink: Sink,
                                                                   small_batches: None) -> None:
    # The batch claimed ahead cannot take ana's update while her start is in flight: the
    # run looks once more when that batch comes back empty.
    incident = declare(app, impacted=[])
    inc.post_update(app, incident, "Still down", "ana@example.org", at(1))
    inc.send_update(app, incident, at(1))
    assert app.deliver_now(at(1)).sent == 4
    kinds = [(r.rcpt_tos[0], r.message["X-Mailflow-Kind"]) for r in sink.received]
    for rcpt in ("ana@example.org", "ops-team@example.org"):
        assert [k for r, k in kinds if r == rcpt] == ["start", "update"]


class Recorder:
    """A transport that takes everything (awaiting the previous mark as SMTP does)."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, envelope_from: str, recipient: str, raw: bytes, *,
                   before_data: Callable[[], Awaitable[None]] | None = None) -> None:
        if before_data is not None:
            await before_data()
        self.sent.append(recipient)

    async def close(self) -> None:
        pass


def test_a_stopped_run_gives_back_the_batch_it_claimed_ahead(app: Mailflow,
                                                            small_batches: None) -> None:
    declare(app, impacted=MANY)
    recorder = Recorder()
    # The first batch (2) goes out while the next (4) is claimed; then SIGTERM.
    report = asyncio.run(app.outbox.deliver(recorder, T0,
                                            should_stop=lambda: len(recorder.sent) >= 2))
    assert report.sent == 2 and len(recorder.sent) == 2
    statuses = Counter(m.status for m in OutMessage.select())
    assert statuses == {"sent": 2, "queued": 10}, "nothing left claimed by a sender that stopped"
    assert asyncio.run(app.outbox.deliver(recorder, T0)).sent == 10


def test_bodies_encoded_once_are_the_bytes_of_encoding_each_copy() -> None:
    # Quoted-printable is encoded once for the lines shared by every copy, and per recipient
    # only for the lines with markers: the result must be byte for byte the whole encoding.
    rng = random.Random(7)
    markers = _Markers()
    keys = ["greeting", "name", "reason", "local0"]
    pieces = ["a", " ", "\t", ".", "=", "é", "€", "\n", "\r\n", "\r", "x" * 75, "   ", "{}",
              *(str(getattr(markers, k)) if k != "local0" else str(markers.local(None))
                for k in keys)]
    values = {"greeting": "Hello Chloé,", "name": "Ana  Lima ", "reason": "as a <b>lead</b>",
              "local0": " (11:00 Europe/Zurich)"}
    fill = markers._pattern
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 40)))
        expected = _qp(fill.sub(lambda m: values.get(m.group(1), ""), text))
        assert _Part(text, fill).encode(values) == expected, repr(text)


@pytest.mark.parametrize(("raw", "received"), [
    # CRLF throughout: sent as it is, dot-stuffed (the relay strips the extra dots again)
    (b".first\r\nSubject: x\r\n\r\n.\r\n..two\r\nend.\r\n",
     b".first\r\nSubject: x\r\n\r\n.\r\n..two\r\nend.\r\n"),
    # anything else goes through aiosmtplib, which fixes the line ends
    (b"Subject: x\n\n.dot\nlast", b"Subject: x\r\n\r\n.dot\r\nlast\r\n"),
])
def test_smtp_transport_sends_the_bytes_it_is_given(sink: Sink, raw: bytes,
                                                     received: bytes) -> None:
    async def send() -> None:
        transport = outbox.SMTPTransport(Outbound(host="127.0.0.1", port=sink.port,
                                                  starttls=False))
        await transport.send("incidents@example.org", "ana@example.org", raw)
        await transport.send("incidents@example.org", "bob@example.org", raw)  # same connection
        await transport.close()

    asyncio.run(send())
    assert [r.data for r in sink.received] == [received, received]
    assert [r.rcpt_tos for r in sink.received] == [["ana@example.org"], ["bob@example.org"]]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Every test here runs on both databases."""
    return str(request.param)


# PostgreSQL: what the outbox does when the database lets it down in the middle of a batch.

def _refuse_updates(app: Mailflow, when: str) -> None:
    """A trigger that makes the server refuse the outbox updates matching `when`."""
    app.db.execute_sql("CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                       "$$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$")
    app.db.execute_sql("CREATE TRIGGER refuse BEFORE UPDATE ON outmessage FOR EACH ROW "
                       f"WHEN ({when}) EXECUTE FUNCTION refuse()")


# PostgreSQL only (a trigger makes the failure; SQLite has no other sender).
@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_lost_mark_withholds_the_next_data_and_gives_the_rest_back(
        app: Mailflow, backend: str, small_batches: None) -> None:
    declare(app, impacted=MANY)
    ids = [m.id for m in OutMessage.select().order_by(OutMessage.id)]
    third = OutMessage.get_by_id(ids[2]).recipient
    _refuse_updates(app, f"NEW.status = 'sent' AND NEW.recipient = '{third}'")
    recorder = Recorder()
    report = asyncio.run(app.outbox.deliver(recorder, T0))
    # The third went out and its mark failed: the fourth, already past its envelope, is not
    # given its DATA (it could go out twice as well), and the batch stops.
    assert recorder.sent == [OutMessage.get_by_id(i).recipient for i in ids[:3]]
    assert report.sent == 3
    statuses = Counter(m.status for m in OutMessage.select())
    # Only the unmarked one stays claimed; the rest of its batch and the batch claimed
    # ahead are given back at once, not left behind a five-minute lease.
    assert statuses == {"sent": 2, "sending": 1, "queued": 9}
    assert OutMessage.get_by_id(ids[2]).status == "sending"


@pytest.mark.parametrize("backend", ["postgresql"])  # SQLite connections are not dropped
def test_a_batch_stops_when_the_connection_holding_its_claims_is_dropped(
        app: Mailflow, backend: str, small_batches: None) -> None:
    class Cutting(Recorder):
        async def send(self, envelope_from: str, recipient: str, raw: bytes, *,
                       before_data: Callable[[], Awaitable[None]] | None = None) -> None:
            await super().send(envelope_from, recipient, raw, before_data=before_data)
            if len(self.sent) == 2:  # as in a database restart in the middle of a batch
                app.db.execute_sql(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()")

    declare(app, impacted=MANY)
    ids = [m.id for m in OutMessage.select().order_by(OutMessage.id)]
    cutting = Cutting()
    report = asyncio.run(app.outbox.deliver(cutting, T0))
    # The second one's mark succeeds on a new connection, but the batch's claims died with
    # the old one (another instance may send the rest now): the third gets no DATA.
    assert cutting.sent == [OutMessage.get_by_id(i).recipient for i in ids[:2]]
    assert report.sent == 2
    assert OutMessage.get_by_id(ids[1]).status == "sent"
    recorder = Recorder()
    asyncio.run(app.outbox.deliver(recorder, T0 + outbox.LEASE))
    assert sorted(cutting.sent + recorder.sent) == sorted(m.recipient for m in OutMessage.select())
    assert Counter(m.status for m in OutMessage.select()) == {"sent": 12}


# PostgreSQL only (a trigger makes the failure; SQLite has no other sender).
@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_worker_failing_stops_the_other_before_its_batch_is_given_back(
        app: Mailflow, backend: str, small_batches: None) -> None:
    class Refusing(Recorder):
        async def send(self, envelope_from: str, recipient: str, raw: bytes, *,
                       before_data: Callable[[], Awaitable[None]] | None = None) -> None:
            if recipient == refused:
                raise outbox.TemporaryFailure("421 try later")
            await super().send(envelope_from, recipient, raw, before_data=before_data)

    declare(app, impacted=MANY)
    ids = [m.id for m in OutMessage.select().order_by(OutMessage.id)]
    refused = OutMessage.get_by_id(ids[1]).recipient
    # Recording the retry fails: the exception leaves that worker.
    _refuse_updates(app, f"NEW.status = 'queued' AND NEW.recipient = '{refused}'")
    first, second = Refusing(), Refusing()

    async def run() -> list[str]:
        with pytest.raises(Exception, match="refused by the test"):
            await app.outbox.deliver(first, T0, 2, [second])
        after = [*first.sent, *second.sent]
        for _ in range(20):  # a worker left running would go on sending meanwhile
            await asyncio.sleep(0)
        assert [*first.sent, *second.sent] == after
        return after

    sent = asyncio.run(run())
    assert len(sent) <= 3, "the other worker stopped after the message it had in hand"
    statuses = Counter(m.status for m in OutMessage.select())
    assert statuses["sending"] == 1, "only the message whose retry was not recorded"
    assert statuses["sent"] == len(sent) and statuses["queued"] == 12 - 1 - len(sent)


@pytest.mark.parametrize("backend", ["postgresql"])  # SQLite connections are not dropped
def test_the_lane_replaces_a_connection_the_server_dropped_while_idle(
        app: Mailflow, backend: str, small_batches: None) -> None:
    declare(app, impacted=MANY)
    recorder = Recorder()
    asyncio.run(app.outbox.deliver(recorder, T0, should_stop=lambda: len(recorder.sent) >= 2))
    # As in a database restart between two drains: the lane's connection is cut.
    cut = app.db.execute_sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                             "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    assert len(cut.fetchall()) == 1, "the outbox lane's"
    report = asyncio.run(app.outbox.deliver(recorder, T0))
    assert report.sent == 10 and len(recorder.sent) == 12 == len(set(recorder.sent))
    assert Counter(m.status for m in OutMessage.select()) == {"sent": 12}
