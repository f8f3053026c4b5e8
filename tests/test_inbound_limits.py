"""No sender stalls or exhausts the inbound server: budgets, caps and calm logs, through
the real server (`inbound.listen`, as the daemon runs it) on loopback."""

from __future__ import annotations

import asyncio
import logging
import socket
import sqlite3
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from mailflow import tokens
from mailflow.app import Mailflow
from mailflow.config import load_config
from mailflow.inbound import InboundHandler, count_parts, make_protocol
from mailflow.models import Entry, Incident, InMessage, OutMessage
from mailflow.testing import Sink, write_config

from .conftest import T0
from .helpers import InboundServer, declare_incident, message

NOW = T0 + timedelta(minutes=20)


@pytest.fixture
def make_app(tmp_path: Path, sink: Sink) -> Iterator[Callable[..., Mailflow]]:
    """An app whose [inbound] section is the given lines."""
    apps: list[Mailflow] = []

    def make(**inbound: object) -> Mailflow:
        lines = "".join(f"{key} = {value}\n" for key, value in inbound.items())
        write_config(tmp_path, sink.port, extra=f"[inbound]\n{lines}" if lines else "")
        apps.append(Mailflow(load_config(tmp_path / "mailflow.toml")))
        return apps[-1]

    yield make
    for app in apps:
        app.close()


def address_of(app: Mailflow, incident: Incident) -> str:
    cfg = app.config
    return tokens.reply_address(cfg.reply_local, cfg.reply_domain, incident.id, cfg.secret)


def updates(incident: Incident) -> list[str]:
    return [e.text for e in Entry.select().where((Entry.incident == incident)
                                                 & (Entry.kind == "update")).order_by(Entry.id)]


def banner(port: int) -> bytes:
    """The first line the server sends a new connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        return sock.makefile("rb").readline()


def parts_bomb(parts: int) -> bytes:
    """A 'declaration' from a stranger with `parts` sibling text parts (3.7 MB at 100,000)."""
    body = b"".join(b"--B\r\nContent-Type: text/plain\r\n\r\nx\r\n" for _ in range(parts))
    return (b"From: mallory@evil.example\r\nTo: incidents@example.org\r\nSubject: hi\r\n"
            b"Message-ID: <bomb@evil.example>\r\nMIME-Version: 1.0\r\n"
            b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n' + body + b"--B--\r\n")


# ------------------------------------------------------------------ MIME parts

def test_count_parts_counts_nested_and_sibling_parts_and_stops_early() -> None:
    assert count_parts(b"Subject: x\r\n\r\nplain text\r\n--B\r\n", 1000) == 1
    assert count_parts(parts_bomb(5), 1000) == 6
    nested = (b'Content-Type: multipart/mixed; boundary="a"\r\n\r\n--a\r\n'
              b'Content-Type: multipart/alternative; boundary="b"\r\n\r\n--b\r\n\r\nx\r\n--b\r\n'
              b"\r\ny\r\n--b--\r\n--a--\r\n")
    assert count_parts(nested, 1000) == 4
    assert count_parts(parts_bomb(100_000), 1000) == 1001


def test_100000_parts_are_refused_before_parsing_and_others_are_served(make_app) -> None:
    app = make_app()
    incident = declare_incident(app)
    with InboundServer(app, NOW) as server:
        code, answer = server.send(parts_bomb(100_000), "incidents@example.org",
                                   mail_from="mallory@evil.example")
        assert code == 552, answer
        assert b"too many MIME parts" in answer
        assert InMessage.select().count() == 0
        # Under the cap, a multipart reply is parsed and posted as usual.
        code, answer = server.send(parts_bomb(900).replace(
            b"mallory@evil.example", b"bob@example.org"), address_of(app, incident))
        assert code == 250, answer
        [text] = updates(incident)
        assert set(text.split()) == {"x"}


# ------------------------------------------------------------------ the database budget

def test_a_held_write_lock_gives_451_within_the_budget_and_the_loop_keeps_serving(
        make_app) -> None:
    app = make_app(process_timeout=1)
    incident = declare_incident(app)
    to = address_of(app, incident)
    reply = message("Replica promoted.", message_id="<held-lock@client.example>")
    holder = sqlite3.connect(app.config.database, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    answers: list[tuple[int, bytes]] = []
    with InboundServer(app, NOW) as server:
        sender = threading.Thread(target=lambda: answers.append(server.send(reply, to)))
        sender.start()
        while server.call(lambda: server.handler.in_flight) == 0:
            pass  # until the reply is being processed
        # While that reply waits for the database, a new client is greeted and served.
        assert banner(server.port).startswith(b"220 ")
        assert server.call(lambda: server.handler.in_flight) == 1, "still waiting"
        sender.join(30)
        [(code, answer)] = answers
        assert code == 451, answer
        holder.execute("ROLLBACK")
        holder.close()
        assert updates(incident) == [], "a 451 leaves nothing behind"
        # The MTA retries: the reply is applied once, now (and not also by the late worker).
        code, answer = server.send(reply, to)
        assert code == 250 and b"posted" in answer, answer
    assert updates(incident) == ["Replica promoted."]
    assert InMessage.select().count() == 1


# ------------------------------------------------------------------ connections and memory

def test_the_101st_connection_gets_421_and_the_log_stays_calm(make_app, caplog) -> None:
    app = make_app()
    caplog.set_level(logging.WARNING)  # as the daemon logs: aiosmtpd's chatter is INFO
    caplog.set_level(logging.INFO, logger="mailflow")
    socks = []
    with InboundServer(app, NOW) as server:
        try:
            for _ in range(100):
                sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
                assert sock.makefile("rb").readline().startswith(b"220 ")
                socks.append(sock)
            for _ in range(300):  # the 101st, and a flood after it
                assert banner(server.port).startswith(b"421 4.7.0 too many connections")
        finally:
            for sock in socks:
                sock.close()
        refusals = [r for r in caplog.records if "refused" in r.getMessage()]
        assert len(refusals) == 1, [r.getMessage() for r in refusals]
        assert "max_connections (100)" in refusals[0].getMessage()
        assert len(caplog.records) < 50, "no line, let alone a traceback, per connection"
        while server.call(lambda: server.gate.open) > 0:
            pass  # the server sees the 100 hang up
        assert banner(server.port).startswith(b"220 "), "slots are given back"


def _start_data(port: int) -> tuple[socket.socket, Callable[[], bytes]]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    f = sock.makefile("rb")
    assert f.readline().startswith(b"220")
    for command in (b"HELO client.example", b"MAIL FROM:<bob@example.org>",
                    b"RCPT TO:<incidents@example.org>", b"DATA"):
        sock.sendall(command + b"\r\n")
        assert f.readline()[:1] in b"23", command
    return sock, f.readline


def test_unfinished_data_is_capped_across_connections(make_app) -> None:
    app = make_app(max_size=65536, max_pending_bytes=65536)
    lines = b"".join(b"%05d" % i + b"y" * 993 + b"\r\n" for i in range(40))  # 40 kB
    with InboundServer(app, NOW) as server:
        first, first_answer = _start_data(server.port)
        first.sendall(b"From: bob@example.org\r\nSubject: log\r\n\r\n" + lines)
        while server.call(lambda: server.gate.pending_bytes) < len(lines):
            pass
        second, second_answer = _start_data(server.port)
        second.sendall(lines)
        assert second_answer().startswith(b"421 4.3.2 too much mail in progress")
        assert second.recv(10) == b"", "and hung up"
        second.close()
        first.sendall(b".\r\n")
        assert first_answer()[:1] in b"25", "the first one is still received"
        first.close()
        while server.call(lambda: server.gate.pending_bytes) > 0:
            pass


def test_an_idle_client_is_disconnected(make_app) -> None:
    app = make_app(idle_timeout=1)
    with InboundServer(app, NOW) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            f = sock.makefile("rb")
            assert f.readline().startswith(b"220")
            assert f.readline() == b"", "closed by the server after a second of silence"


def test_recipients_are_capped(make_app) -> None:
    app = make_app(max_recipients=2)
    addresses = [address_of(app, declare_incident(app)) for _ in range(3)]
    with InboundServer(app, NOW) as server:
        code, answer = server.send(message("Three at once."), addresses)
        assert code == 452, answer


# ------------------------------------------------------------------ one message, applied once

def spellings(address: str) -> list[str]:
    """Ways of writing the same reply address that all verify."""
    local, _, domain = address.partition("@")
    base, _, token = local.partition("+")
    number, _, mac = token.partition("-")
    return [address, address.upper(), f"{base}+00{number}-{mac}@{domain}",
            f"{base.upper()}+0{number}-{mac.upper()}@{domain.title()}",
            f"{base}+{'0' * 9}{number}-{mac}@{domain.upper()}"]


def test_several_spellings_of_one_reply_address_are_applied_once(make_app) -> None:
    app = make_app()
    incident = declare_incident(app)
    before = OutMessage.select().count()
    with InboundServer(app, NOW) as server:
        code, answer = server.send(message("send now\n\nReplica promoted."),
                                   spellings(address_of(app, incident)))
        assert code == 250, answer
    assert updates(incident) == ["Replica promoted."]
    assert InMessage.select().count() == 1, "the raw bytes are stored once"
    queued = [m.recipient for m in OutMessage.select().order_by(OutMessage.id)][before:]
    assert queued and len(queued) == len(set(queued)), "one update email per recipient"


def test_spellings_of_the_base_address_declare_once(make_app) -> None:
    app = make_app()
    declaration = message("service: learn\nseverity: P2\nimpact: degraded\n\nSlow pages",
                          sender="Ana Lima <ana@example.org>", subject="Learn is slow")
    with InboundServer(app, NOW) as server:
        code, answer = server.send(declaration, ["incidents@example.org", "INCIDENTS@example.org",
                                                 "Incidents@Example.ORG"],
                                   mail_from="ana@example.org")
        assert code == 250 and b"declared" in answer, answer
    assert Incident.select().count() == 1


def test_a_message_is_committed_whole_or_not_at_all(make_app) -> None:
    app = make_app()
    incident = declare_incident(app)
    declaration = message("service: learn\nseverity: P2\nimpact: degraded\n\nAlso slow",
                          sender="Ana Lima <ana@example.org>", subject="Learn is slow",
                          message_id="<both@client.example>")
    # The disk refuses the second half of the message (storing the reply to INC-1), after
    # the declaration in its first half went through.
    app.db.execute_sql("CREATE TRIGGER fail BEFORE INSERT ON inmessage WHEN NEW.incident_id = "
                       f"{incident.id} BEGIN SELECT RAISE(ABORT, 'disk trouble'); END")
    to = ["incidents@example.org", address_of(app, incident)]
    with InboundServer(app, NOW) as server:
        for _ in range(3):  # the MTA retries the 451
            code, answer = server.send(declaration, to, mail_from="ana@example.org")
            assert code == 451, answer
        assert Incident.select().count() == 1, "no declaration at any retry"
        assert InMessage.select().count() == 0 and updates(incident) == []
        app.db.execute_sql("DROP TRIGGER fail")
        code, answer = server.send(declaration, to, mail_from="ana@example.org")
        assert code == 250, answer
    assert Incident.select().count() == 2
    assert len(updates(incident)) == 1, "and the reply half posted once"


class _Recorder(asyncio.Transport):
    """A transport that keeps what the server writes, one entry per write (a send())."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": ("127.0.0.1", 40000)}.get(name, default)


def test_a_multi_line_reply_goes_out_in_one_write(make_app) -> None:
    # Each send() gives the worker threads the GIL: EHLO's six lines were six of them.
    app = make_app()
    handler = InboundHandler(app)

    async def converse() -> list[bytes]:
        proto = make_protocol(app, handler)
        recorder = _Recorder()
        proto.connection_made(recorder)
        for line in (b"EHLO client.example\r\n", b"NOOP\r\n"):
            before = len(recorder.writes)
            proto.data_received(line)
            for _ in range(100):  # let the session's task answer (no time passes)
                if len(recorder.writes) > before and recorder.writes[-1][3:4] == b" ":
                    break
                await asyncio.sleep(0)
        recorder.close()
        proto.connection_lost(None)
        return recorder.writes

    try:
        writes = asyncio.run(converse())
    finally:
        handler.close()
    assert writes[0].startswith(b"220 ")
    ehlo = writes[1]
    lines = ehlo.split(b"\r\n")[:-1]
    assert len(lines) >= 4 and all(line[3:4] == b"-" for line in lines[:-1])
    assert lines[-1].startswith(b"250 ") and ehlo.endswith(b"\r\n")
    assert b"250-8BITMIME\r\n" in ehlo and b"SIZE" in ehlo
    assert writes[2] == b"250 OK\r\n" and len(writes) == 3
