"""Subscribers: double opt-in and unsubscribes through the real inbound SMTP server and
the real HTTP listener, with every email read back from the sink."""

from __future__ import annotations

import re
import smtplib
import socket
import time
import urllib.error
import urllib.request
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from urllib.parse import unquote

from click.testing import CliRunner

from mailflow.cli import cli
from mailflow.testing import Sink

from .conftest import T0, write_config
from .helpers import Process, text_of, wait_for

BASE = "incidents@example.org"
TOKEN = "alert-token-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def setup(folder: Path, sink: Sink) -> int:
    port = free_port()
    write_config(folder, sink.port, f'[status]\ndir = "site"\n[http]\nenabled = true\n'
                                    f'port = {port}\ntoken = "{TOKEN}"\n')
    return port


def run(folder: Path, *args: str) -> str:
    env = {"MAILFLOW_CONFIG": str(folder / "mailflow.toml"), "MAILFLOW_NOW": T0.isoformat(),
           "MAILFLOW_USER": "ana@example.org"}
    r = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.output


def send(port: int, sender: str, subject: str, body: str = "", to: str = BASE) -> int:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    msg["Message-ID"] = f"<{time.monotonic_ns()}@client.example>"
    msg.set_content(body or "\n")
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        try:
            smtp.sendmail(sender, [to], msg.as_bytes(policy=SMTP))
        except (smtplib.SMTPDataError, smtplib.SMTPRecipientsRefused) as exc:
            code = getattr(exc, "smtp_code", 550)
            return int(code)
    return 250


def to(sink: Sink, address: str) -> list[EmailMessage]:
    return [m for m in sink.messages() if address in str(m["To"])]


def declare_and_publish(folder: Path, text: str) -> None:
    run(folder, "declare", "--service", "learn", "--severity", "P1", "--impact", "outage",
        "--summary", "Learn down (Ana Lima on it)", "--lead", "ana@example.org")
    run(folder, "publish", "INC-1", "--text", text)


def status_of(folder: Path, email: str) -> str:
    out = run(folder, "subscribers")
    line = next((x for x in out.splitlines() if x.split()[-3:-2] == [email]
                 or email in x.split()), "")
    return line.split()[1] if line else ""


def test_subscribe_confirm_publish_and_one_click_unsubscribe(tmp_path: Path,
                                                             sink: Sink) -> None:
    http = setup(tmp_path, sink)
    daemon = Process(tmp_path, {"MAILFLOW_NOW": T0.isoformat()})
    try:
        port = daemon.port or 0
        assert send(port, "zoe@outside.example", "subscribe learn") == 250
        wait_for(lambda: to(sink, "zoe@outside.example"), what="the confirmation email")
        ask = to(sink, "zoe@outside.example")[0]
        assert "[confirm " in ask["Subject"] and ask["Auto-Submitted"] == "auto-generated"
        assert status_of(tmp_path, "zoe@outside.example") == "pending"
        # Asking again within the hour sends no second confirmation (no mail bombs).
        assert send(port, "zoe@outside.example", "subscribe learn") == 250
        # An unknown service is refused in words, and nothing is stored.
        assert send(port, "yan@outside.example", "subscribe nosuch") == 250
        wait_for(lambda: to(sink, "yan@outside.example"), what="the refusal")
        assert "nosuch" in text_of(to(sink, "yan@outside.example")[0])
        # A forged code confirms nothing.
        forged = re.sub(r"[0-9a-f]{24}", "0" * 24, ask["Subject"])
        assert send(port, "zoe@outside.example", f"Re: {forged}") == 250
        assert status_of(tmp_path, "zoe@outside.example") == "pending"
        assert send(port, "zoe@outside.example", f"Re: {ask['Subject']}") == 250
        assert status_of(tmp_path, "zoe@outside.example") == "active"
        assert len(to(sink, "zoe@outside.example")) == 1
        # Our own address never subscribes (it would confirm itself by mail).
        assert send(port, BASE, "subscribe learn") == 250
        assert BASE not in run(tmp_path, "subscribers")

        declare_and_publish(tmp_path, "Learn is down; we are restoring it")
        # The daemon sends it: wait for it rather than read the sink at once.
        wait_for(lambda: len(to(sink, "zoe@outside.example")) == 2, what="the update")
        update = to(sink, "zoe@outside.example")[-1]
        assert "Learn is down; we are restoring it" in text_of(update)
        # Only public words: not the internal summary, no name, no address of the team.
        for secret in ("Ana Lima", "ana@example.org", "P1"):
            assert secret not in update.as_string()
        assert update["List-Id"] == "learn status <learn.status.example.org>"
        assert update["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        links = re.findall(r"<([^>]+)>", update["List-Unsubscribe"])
        url = next(x for x in links if x.startswith("http://"))
        assert url.startswith(f"http://127.0.0.1:{http}/unsubscribe/")
        assert any(x.startswith(f"mailto:{BASE}?subject=") for x in links)

        # A tampered link is refused and unsubscribes nobody.
        bad = urllib.request.Request(url[:-3] + "000", data=b"List-Unsubscribe=One-Click",
                                     method="POST")
        try:
            urllib.request.urlopen(bad, timeout=10)
            raise AssertionError("a forged token was accepted")
        except urllib.error.HTTPError as exc:
            assert exc.code == 400
        assert status_of(tmp_path, "zoe@outside.example") == "active"
        # Opening the link (or a link scanner fetching it) changes nothing: a button.
        with urllib.request.urlopen(url, timeout=10) as resp:
            assert b'method="post"' in resp.read()
        assert status_of(tmp_path, "zoe@outside.example") == "active"
        # RFC 8058: the provider POSTs List-Unsubscribe=One-Click; effective at once.
        req = urllib.request.Request(url, data=b"List-Unsubscribe=One-Click", method="POST",
                                     headers={"Content-Type":
                                              "application/x-www-form-urlencoded"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200
        assert status_of(tmp_path, "zoe@outside.example") == "unsubscribed"
    finally:
        daemon.close()

    # A later import never undoes it; the new address is added.
    (tmp_path / "list.txt").write_text("zoe@outside.example\nyan@outside.example\n")
    out = run(tmp_path, "subscribers", "import", "learn", str(tmp_path / "list.txt"))
    assert "1 subscriber(s) added" in out and "skipped (they unsubscribed): zoe@" in out
    assert status_of(tmp_path, "zoe@outside.example") == "unsubscribed"
    before = len(to(sink, "zoe@outside.example"))
    run(tmp_path, "update", "INC-1", "--text", "Restore at 40%", "--send")
    run(tmp_path, "publish", "INC-1")
    assert len(to(sink, "zoe@outside.example")) == before
    assert "Restore at 40%" in text_of(to(sink, "yan@outside.example")[-1])


def test_unsubscribe_by_mailto_and_by_asking(tmp_path: Path, sink: Sink) -> None:
    setup(tmp_path, sink)
    (tmp_path / "list.txt").write_text("# our old list\nzoe@outside.example\nyan@outside.example\n")
    run(tmp_path, "subscribers", "import", "learn", str(tmp_path / "list.txt"))
    declare_and_publish(tmp_path, "Learn is down")
    update = to(sink, "zoe@outside.example")[-1]
    mailto = next(x for x in re.findall(r"<([^>]+)>", update["List-Unsubscribe"])
                  if x.startswith("mailto:"))
    address, _, query = mailto[len("mailto:"):].partition("?subject=")
    daemon = Process(tmp_path, {"MAILFLOW_NOW": T0.isoformat()})
    try:
        port = daemon.port or 0
        # The mail client's unsubscribe button: the signed subject acts at once.
        assert send(port, "zoe@outside.example", unquote(query), to=address) == 250
        assert status_of(tmp_path, "zoe@outside.example") == "unsubscribed"
        # "unsubscribe" written by hand: the mailbox confirms, as for subscribing.
        assert send(port, "yan@outside.example", "unsubscribe", "unsubscribe learn") == 250
        wait_for(lambda: any("[confirm " in str(m["Subject"])
                             for m in to(sink, "yan@outside.example")), what="the question")
        assert status_of(tmp_path, "yan@outside.example") == "active"
        assert send(port, "yan@outside.example", "unsubscribe") == 250  # asked again: no mail
        question = next(m for m in to(sink, "yan@outside.example")
                        if "[confirm " in str(m["Subject"]))
        assert send(port, "yan@outside.example", f"Re: {question['Subject']}") == 250
        assert status_of(tmp_path, "yan@outside.example") == "unsubscribed"
        assert sum("[confirm " in str(m["Subject"]) for m in to(sink, "yan@outside.example")) == 1
    finally:
        daemon.close()


def test_a_bad_import_line_imports_nothing_and_says_where(tmp_path: Path, sink: Sink) -> None:
    setup(tmp_path, sink)
    (tmp_path / "list.txt").write_text("zoe@outside.example\nyan at outside\n")
    env = {"MAILFLOW_CONFIG": str(tmp_path / "mailflow.toml"), "MAILFLOW_NOW": T0.isoformat()}
    r = CliRunner().invoke(cli, ["subscribers", "import", "learn", str(tmp_path / "list.txt")],
                           env=env)
    assert r.exit_code == 1
    assert "line 2: 'yan at outside'" in r.output and "nothing was imported" in r.output
    assert "no subscribers" in run(tmp_path, "subscribers")
