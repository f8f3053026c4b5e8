"""Replies read from a real Dovecot mailbox ([inbound] mode = "imap"): the SMTP pipeline,
exactly once across restarts, reconnects and a UIDVALIDITY change, folders, odd messages."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import replace
from email.message import EmailMessage
from email.policy import SMTP

import pytest

from mailflow.app import Mailflow
from mailflow.config import Imap, load_config
from mailflow.imap import ImapReader, envelope_sender, status_line
from mailflow.inbound import InboundHandler
from mailflow.models import Entry, ImapMessage, Incident, InMessage
from mailflow.testing import Sink

from .conftest import BACKENDS, T0
from .dovecot import Dovecot
from .helpers import NOW, by_rcpt, declare

POSTED, REFUSED, IGNORED = "mailflow/posted", "mailflow/refused", "mailflow/ignored"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each mailbox test runs on SQLite and on PostgreSQL (several daemons may read one
    mailbox; what was applied is kept in the shared database)."""
    return str(request.param)


@pytest.fixture
def mailbox_app(project, dovecot) -> Iterator[Mailflow]:  # noqa: ANN001
    """The application reading replies from the test's Dovecot (plain IMAP on loopback)."""
    config = load_config(project / "mailflow.toml")
    config = replace(config, inbound=replace(config.inbound, mode="imap"),
                     imap=Imap(host="127.0.0.1", port=dovecot.port, tls="none",
                               username=dovecot.user, password=dovecot.password))
    application = Mailflow(config)
    yield application
    application.close()


@pytest.fixture
def incident(mailbox_app: Mailflow, sink: Sink) -> Incident:
    created = declare(mailbox_app)
    mailbox_app.deliver_now(T0)
    return created


def reply_address(sink: Sink) -> str:
    return by_rcpt(sink)["ana@example.org"][0]["Reply-To"]


def reply(body: str, to: str, sender: str = "bob@example.org", n: int = 0,
          return_path: str | None = "") -> bytes:
    msg = EmailMessage()
    if return_path is not None:  # what the delivering server writes: the MAIL FROM
        msg["Return-Path"] = f"<{return_path or sender}>"
    msg["From"] = f"Bob Stone <{sender}>"
    msg["To"] = to
    msg["Subject"] = "Re: [INC-1] ISC Learn Platform: outage"
    msg["Message-ID"] = f"<reply-{n}-{abs(hash(body))}@client.example>"
    msg.set_content(body)
    return msg.as_bytes(policy=SMTP)


_READERS: list[ImapReader] = []


@pytest.fixture(autouse=True)
def _hang_up() -> Iterator[None]:
    """Every reader a test made is disconnected, whatever the test did."""
    yield
    while _READERS:
        _READERS.pop().stop()


def reader(app: Mailflow, cls: type[ImapReader] = ImapReader, **options: object) -> ImapReader:
    made = cls(app, InboundHandler(app, now=lambda: NOW), now=lambda: NOW,
               **options)  # type: ignore[arg-type]
    _READERS.append(made)
    return made


def updates(incident: Incident) -> list[str]:
    return [e.text for e in Entry.select().where((Entry.incident == incident)
                                                 & (Entry.kind == "update")).order_by(Entry.id)]


def test_a_reply_in_the_mailbox_is_posted_once_and_moved(mailbox_app, sink, incident,  # noqa: ANN001
                                                         dovecot) -> None:
    to = reply_address(sink)
    dovecot.append(reply("Found it: the sessions index is corrupt.", to))
    r = reader(mailbox_app)
    r.connect()
    assert r.drain() == 1
    assert updates(incident) == ["Found it: the sessions index is corrupt."]
    assert dovecot.uids("INBOX") == []
    assert len(dovecot.messages(POSTED)) == 1, "moved, never deleted"
    assert dovecot.uids(REFUSED) == [] and dovecot.uids(IGNORED) == [], "folders created"
    assert r.drain() == 0
    r.disconnect()
    again = reader(mailbox_app)  # a restart: a new reader on the same database
    again.connect()
    assert again.drain() == 0
    assert updates(incident) == ["Found it: the sessions index is corrupt."]
    [row] = ImapMessage.select()
    assert row.outcome == "posted" and row.message_id.startswith("<reply-0-")


def test_commands_need_return_path_equal_to_from(mailbox_app, sink, incident,  # noqa: ANN001
                                                 dovecot) -> None:
    to = reply_address(sink)
    dovecot.append(reply("severity: P2", to, sender="ana@example.org",
                         return_path="forger@evil.example", n=1))
    dovecot.append(reply("severity: P3", to, sender="ana@example.org", n=2))
    r = reader(mailbox_app)
    r.connect()
    r.drain()
    assert Incident.get_by_id(incident.id).severity == "P3", \
        "the forged envelope changed nothing; the matching one did"


def test_restart_in_the_middle_of_a_batch_applies_each_once(mailbox_app, sink, incident,  # noqa: ANN001
                                                            dovecot) -> None:
    to = reply_address(sink)
    for n in range(3):
        dovecot.append(reply(f"Update number {n}.", to, n=n))

    class Crashing(ImapReader):
        def applied(self, uid: int) -> None:
            if self.processed == 1:  # the second message is committed, not yet moved
                raise ConnectionResetError("the process died here")

    first = reader(mailbox_app, Crashing)
    first.connect()
    with pytest.raises(ConnectionResetError):
        first.drain()
    first.disconnect()
    assert len(dovecot.uids("INBOX")) == 2, "the second and third are still in the inbox"
    second = reader(mailbox_app)
    second.connect()
    assert second.drain() == 2
    assert updates(incident) == ["Update number 0.", "Update number 1.", "Update number 2."]
    assert dovecot.uids("INBOX") == [] and len(dovecot.uids(POSTED)) == 3


def test_a_uidvalidity_change_does_not_apply_again(mailbox_app, sink, incident,  # noqa: ANN001
                                                   dovecot) -> None:
    to = reply_address(sink)
    dovecot.append(reply("Applied before the reset.", to, n=1))

    class Crashing(ImapReader):
        def applied(self, uid: int) -> None:
            raise ConnectionResetError("gone before the move")

    first = reader(mailbox_app, Crashing)
    first.connect()
    with pytest.raises(ConnectionResetError):
        first.drain()
    first.disconnect()
    [old] = ImapMessage.select()
    new_validity = dovecot.reset_uidvalidity()
    assert new_validity != old.uidvalidity
    dovecot.append(reply("New after the reset.", to, n=2))
    second = reader(mailbox_app)
    second.connect()
    assert second.drain() == 2
    assert updates(incident) == ["Applied before the reset.", "New after the reset."]
    assert len(dovecot.uids(POSTED)) == 2


def test_unparseable_huge_and_foreign_mail_is_moved_not_retried(mailbox_app, sink,  # noqa: ANN001
                                                                incident, dovecot) -> None:
    to = reply_address(sink)
    dovecot.append(b"\x00\xff\xfe garbage without any header block \x01\r\n")
    big = reply("A" * 100 + "\n" + ("x" * 998 + "\n") * (20 * 1024), to, n=3)
    assert len(big) > 20 * 1024 * 1024
    dovecot.append(big)
    dovecot.append(reply("Not for an incident.", "someone@example.org", n=4))
    dovecot.append(reply("Still read after all that.", to, n=5))
    r = reader(mailbox_app)
    r.connect()
    assert r.drain() == 4
    assert len(dovecot.uids(REFUSED)) == 2, "the unparseable one and the 20 MB one"
    assert len(dovecot.uids(IGNORED)) == 1
    assert updates(incident) == ["Still read after all that."]
    assert InMessage.select().count() == 1
    assert r.drain() == 0, "never retried"
    sizes = sorted(len(m) for m in dovecot.messages(REFUSED))
    assert sizes[-1] == len(big), "the big message is kept whole"


def test_a_20_mb_reply_is_posted_when_max_size_allows_it(project, dovecot, sink) -> None:  # noqa: ANN001
    config = load_config(project / "mailflow.toml")
    config = replace(config, inbound=replace(config.inbound, mode="imap",
                                             max_size=32 * 1024 * 1024),
                     imap=Imap(host="127.0.0.1", port=dovecot.port, tls="none",
                               username=dovecot.user, password=dovecot.password))
    app = Mailflow(config)
    try:
        incident = declare(app)
        app.deliver_now(T0)
        big = reply("Logs attached below.\n" + ("y" * 998 + "\n") * (20 * 1024),
                    reply_address(sink), n=6)
        dovecot.append(big)
        r = reader(app)
        r.connect()
        assert r.drain() == 1
        assert len(dovecot.uids(POSTED)) == 1
        [raw] = [m.content for m in InMessage.select()]
        assert len(raw) == len(big)
        assert updates(incident)[0].startswith("Logs attached below.")
    finally:
        app.close()


def test_idle_server_away_and_back(mailbox_app, sink, incident, dovecot, caplog) -> None:  # noqa: ANN001
    caplog.set_level(logging.INFO, logger="mailflow.imap")
    to = reply_address(sink)
    woken = []
    r = reader(mailbox_app, on_posted=lambda: woken.append(1), backoff_max=0.5, timeout=5)
    r.start()
    try:
        assert r.wait_for(lambda: r.up is True)
        dovecot.append(reply("Seen through IDLE.", to, n=7))
        assert r.wait_for(lambda: r.processed == 1), "IDLE told the reader at once"
        dovecot.stop()
        assert r.wait_for(lambda: r.up is False)
        line = status_line(mailbox_app)
        assert line.startswith("replies cannot be read since 2026-11-24 ")
        dovecot.start()
        dovecot.append(reply("severity: P2\nWritten while the reader was away.", to,
                             sender="ana@example.org", n=8))
        r.wake()
        assert r.wait_for(lambda: r.processed == 2, timeout=30)
        assert r.up is True and status_line(mailbox_app) == ""
    finally:
        r.stop()
    texts = updates(incident)
    assert texts[0] == "Seen through IDLE." and len(texts) == 2
    assert texts[1].startswith("Written while the reader was away.")
    states = [m for m in caplog.messages if "replies from" in m]
    assert len([m for m in states if m.startswith("cannot read")]) == 1, states
    assert len([m for m in states if m.endswith("again")]) == 1, states
    assert Incident.get_by_id(incident.id).severity == "P2"
    assert woken, "the receipt queued mail: the outbox was woken"


def test_mailbox_reply_without_return_path_uses_from() -> None:
    from email.message import Message

    m = Message()
    m["From"] = "Bob <Bob@Example.org>"
    assert envelope_sender(m) == "bob@example.org"
    m["Return-Path"] = "<>"
    assert envelope_sender(m) == ""


def test_xoauth2_login_against_dovecot_oauth2_passdb(httpserver, mailbox_app, sink,  # noqa: ANN001
                                                     incident) -> None:
    from urllib.parse import parse_qs

    from imapclient.exceptions import LoginError

    # Dovecot's OAuth2 passdb POSTs the token to this introspection endpoint (RFC 7662).
    json_headers = {"Content-Type": "application/json"}
    httpserver.serve_content(json.dumps({"active": True, "email": "replies"}),
                             headers=json_headers)
    server = Dovecot(introspection_url=httpserver.url + "/introspect")
    server.start()
    try:
        server.append(reply("Logged in with a token.", reply_address(sink), n=9))
        mailbox_app.config = replace(mailbox_app.config, imap=replace(
            mailbox_app.config.imap, port=server.port, password=""))
        good = reader(mailbox_app, token=lambda: "good-token")
        good.connect()
        assert good.drain() == 1
        good.disconnect()
        assert updates(incident) == ["Logged in with a token."]
        httpserver.serve_content(json.dumps({"active": False}), headers=json_headers)
        bad = reader(mailbox_app, token=lambda: "expired-token")
        with pytest.raises(LoginError):
            bad.connect()
        tokens = [parse_qs(r.get_data(as_text=True)).get("token") for r in httpserver.requests]
        assert tokens == [["good-token"], ["expired-token"]], "Dovecot asked the endpoint"
    finally:
        server.close()


def test_the_daemon_logs_in_to_the_mailbox_with_a_refreshed_oauth2_token(
        httpserver, mailbox_app, sink, incident, tmp_path) -> None:  # noqa: ANN001
    """[oauth2] set: the daemon's reader gets its token from the refresh token, not a password."""
    from urllib.parse import parse_qs

    from mailflow.daemon import Daemon
    from mailflow.oauth2 import OAuth2, save, token_path

    # One local HTTP peer plays both parts: the provider's token endpoint (mailflow POSTs
    # grant_type=refresh_token) and the introspection endpoint Dovecot POSTs the token to.
    json_headers = {"Content-Type": "application/json"}
    httpserver.serve_content(json.dumps({"access_token": "fresh-token", "expires_in": 3600,
                                         "active": True, "email": "replies"}),
                             headers=json_headers)
    server = Dovecot(introspection_url=httpserver.url + "/introspect")
    server.start()
    try:
        server.append(reply("Through the token endpoint.", reply_address(sink), n=11))
        mailbox_app.config = replace(
            mailbox_app.config,
            imap=replace(mailbox_app.config.imap, port=server.port, password=""),
            oauth2=OAuth2(provider="generic", client_id="mailflow",
                          token_endpoint=httpserver.url + "/token"))
        save(token_path(mailbox_app.config.state_dir()),
             {"refresh_token": "the-refresh-token", "access_token": "",
              "expires_at": "2000-01-01T00:00:00+00:00"})
        token = Daemon(mailbox_app).imap_token
        assert token is not None, "[oauth2] gives the daemon a token source"
        r = reader(mailbox_app, token=token)
        r.connect()
        assert r.drain() == 1
        r.disconnect()
        assert updates(incident) == ["Through the token endpoint."]
        forms = [parse_qs(q.get_data(as_text=True)) for q in httpserver.requests]
        assert forms[0]["grant_type"] == ["refresh_token"]
        assert forms[0]["refresh_token"] == ["the-refresh-token"]
        assert forms[1]["token"] == ["fresh-token"], "Dovecot checked the refreshed token"
    finally:
        server.close()


def test_show_and_list_say_since_when_replies_cannot_be_read(tmp_path, sink) -> None:  # noqa: ANN001
    from click.testing import CliRunner

    from mailflow.cli import cli
    from mailflow.testing import write_config

    from .dovecot import free_port

    nothing_there = free_port()
    path = write_config(tmp_path, sink.port, extra=(
        f'[inbound]\nmode = "imap"\n[imap]\nhost = "127.0.0.1"\nport = {nothing_there}\n'
        'tls = "none"\nusername = "replies"\npassword = "pw"\n'))
    app = Mailflow(load_config(path))
    try:
        declare(app)
        r = reader(app, backoff_max=0.5, timeout=5)
        r.start()
        assert r.wait_for(lambda: r.up is False)
        r.stop()
    finally:
        app.close()
    for args in (["list"], ["show", "INC-1"]):
        result = CliRunner().invoke(cli, ["--config", str(path), *args])
        assert result.exit_code == 0, result.output
        assert "warning: replies cannot be read since 2026-11-24 10:" in result.stderr
        assert "replies@127.0.0.1/INBOX: [Errno 111] Connection refused" in result.stderr


def test_serve_reads_replies_from_the_mailbox(tmp_path, sink, dovecot) -> None:  # noqa: ANN001
    import os
    import signal
    import subprocess
    import sys
    import threading

    from mailflow.testing import write_config

    from .helpers import text_of, wait_for

    path = write_config(tmp_path, sink.port, extra=(
        f'[inbound]\nmode = "imap"\n[imap]\nhost = "127.0.0.1"\nport = {dovecot.port}\n'
        f'tls = "none"\nusername = "{dovecot.user}"\npassword = "{dovecot.password}"\n'))
    env = {**os.environ, "MAILFLOW_NOW": T0.isoformat()}
    subprocess.run([sys.executable, "-m", "mailflow.cli", "--config", str(path), "declare",
                    "--service", "learn", "--severity", "P1", "--impact", "outage",
                    "--summary", "Learn returns 502", "--lead", "ana@example.org",
                    "--queue-only"], env=env, check=True, capture_output=True)
    proc = subprocess.Popen([sys.executable, "-m", "mailflow.cli", "--config", str(path),
                             "serve", "--tick", "0.2"], env=env, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)
    lines: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))

    reader_thread = threading.Thread(target=read, daemon=True)
    reader_thread.start()
    try:
        wait_for(lambda: len(sink.received) == 2, what="the queued start emails")
        wait_for(lambda: any("reading replies from replies@127.0.0.1/INBOX" in line
                             for line in lines), what="the reader to log in")
        to = sink.received[0].message["Reply-To"]
        dovecot.append(reply("send now\n\nIndex rebuilt, app servers back", to,
                             sender="ana@example.org", n=10))
        wait_for(lambda: len(sink.received) >= 4, what="the update sent at once")
        kinds = sorted(r.message["X-Mailflow-Kind"] for r in sink.received[2:])
        assert "update" in kinds
        update = next(r.message for r in sink.received[2:]
                      if r.message["X-Mailflow-Kind"] == "update")
        assert "Index rebuilt, app servers back" in text_of(update)
        wait_for(lambda: len(dovecot.uids(POSTED)) == 1, what="the move to mailflow/posted")
        assert not any("listening for replies" in line for line in lines), "no SMTP port"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(15)
        reader_thread.join(5)
        assert proc.stderr is not None
        proc.stderr.close()
