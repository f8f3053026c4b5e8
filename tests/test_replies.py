"""mailflow.replies: real client replies, commands, auto replies, bounces, hostile input."""

from __future__ import annotations

import base64
import re
import time
from email import message_from_bytes
from email.policy import compat32
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailflow.commands import DECLARATION_FIELDS, impact_of, parse, severity_of
from mailflow.replies import (
    Command,
    extract_text,
    html_to_text,
    parse_commands,
    parse_reply,
)

from .helpers import assert_clean

FIXTURES = Path(__file__).parent / "fixtures" / "replies"
SUBJECT = "Re: [INC-42] P1 checkout-api: complete downtime"


def load(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def html_part(name: str) -> str:
    """The decoded text/html alternative of a fixture."""
    msg = message_from_bytes(load(name), policy=compat32)
    for part in msg.walk():
        if part.get_content_type() == "text/html":
            return part.get_payload(decode=True).decode(part.get_content_charset())
    raise AssertionError(f"{name} has no text/html part")


# ---------------------------------------------------------------- real clients


def test_gmail_plain_with_wrapped_attribution() -> None:
    reply = parse_reply(load("gmail_en.eml"))
    assert_clean(reply)
    assert reply.sender == "bob.martin@example.org"
    assert reply.sender_name == "Bob Martin"
    assert reply.subject == SUBJECT
    assert reply.message_id == "<CAJx8mQ3+kP0vYd2rN7vW1kqZ4uE9sT6hL0=xB5@mail.gmail.com>"
    assert reply.text == (
        "The primary database ran out of disk; we are moving the WAL to a bigger volume.\n"
        "Writes are failing, reads are fine."
    )
    assert reply.commands == ()
    assert (reply.is_auto_reply, reply.is_bounce, reply.reason) == (False, False, "")


def test_gmail_html_alternative_gives_the_same_text() -> None:
    text = extract_text(html_to_text(html_part("gmail_en.eml")))
    assert text == parse_reply(load("gmail_en.eml")).text


def test_gmail_french() -> None:
    reply = parse_reply(load("gmail_fr.eml"))
    assert_clean(reply)
    assert reply.sender == "amelie.durand@example.fr"
    assert reply.sender_name == "Amélie Durand"
    assert reply.text == (
        "Le service est rétabli pour 80 % des clients, on continue la migration.\n"
        "Prochain point à 11 h."
    )
    assert extract_text(html_to_text(html_part("gmail_fr.eml"))) == reply.text


def test_outlook_desktop_windows_1252() -> None:
    reply = parse_reply(load("outlook_desktop.eml"))
    assert_clean(reply)
    assert reply.sender == "chloe.ng@example.org"
    assert reply.sender_name == "Ng, Chloe"
    assert reply.subject == "RE: [INC-42] P1 checkout-api: complete downtime"
    assert reply.message_id == (
        "<DB9PR07MB8412A1B2C3D4E5F6A7B8C9D0E1F2@DB9PR07MB8412.eurprd07.prod.outlook.com>"
    )
    assert reply.text == (
        "Vendor confirmed the fault on their side \u2013 café payments now go through the "
        "backup PSP.\nWe expect the vendor fix within the hour.\n\nChloé"
    )
    # X-Auto-Response-Suppress asks *others* not to auto-reply: this is a person writing.
    assert not reply.is_auto_reply


def test_outlook_desktop_html_stops_at_divRplyFwdMsg() -> None:
    text = html_to_text(html_part("outlook_desktop.eml"))
    assert "mailflow incident bot" not in text and "Severity" not in text
    assert extract_text(text) == parse_reply(load("outlook_desktop.eml")).text


def test_outlook_german() -> None:
    reply = parse_reply(load("outlook_de.eml"))
    assert_clean(reply)
    assert reply.sender == "jonas.becker@example.de"
    assert reply.subject == "AW: [INC-42] P1 checkout-api: complete downtime"
    # A sign-off plus the name closing the reply is the signature ("Viele Grüße / Jonas").
    assert reply.text == (
        "Der Failover auf das Rechenzentrum Frankfurt ist abgeschlossen.\n"
        "Die Fehlerrate liegt wieder unter 0,1 %."
    )
    # Word HTML has no divRplyFwdMsg: the Von/Gesendet block is cut as text.
    assert extract_text(html_to_text(html_part("outlook_de.eml"))) == reply.text


def test_apple_mail_iphone() -> None:
    reply = parse_reply(load("apple_iphone.eml"))
    assert_clean(reply)
    assert reply.sender == "dana@example.org"
    assert reply.message_id == "<5C3B8E2A-7D41-4F0B-9A57-2E6D1C0B9F11@example.org>"
    assert reply.text == (
        "I\u2019m on the bridge, taking over as communicator. "
        "Customers are seeing timeouts, not errors."
    )
    assert extract_text(html_to_text(html_part("apple_iphone.eml"))) == reply.text


def test_thunderbird_flowed_bottom_posted() -> None:
    reply = parse_reply(load("thunderbird_flowed.eml"))
    assert_clean(reply)
    assert reply.sender == "erik@example.org"
    # format=flowed soft breaks joined, space-stuffed "From" restored, signature dropped.
    assert reply.text == (
        "The WAL volume is resized and the primary accepts writes again. We keep the incident "
        "open until the replication lag is back under 5 seconds.\n\n"
        "From the replica logs: lag is dropping."
    )


def test_html_only_reply_drops_script_style_and_quote() -> None:
    reply = parse_reply(load("html_only.eml"))
    assert_clean(reply)
    assert reply.sender == "li.wei@example.org"
    assert reply.text == (
        "Mitigation deployed: rate limit at 500 req/s & cache warmed.\n"
        "Error rate < 1% since 10:45 \u2014 watching.\n"
        "- api-1: healthy\n"
        "- api-2: draining"
    )


def test_reply_with_commands() -> None:
    reply = parse_reply(load("commands.eml"))
    assert_clean(reply)
    assert reply.commands == (Command("severity", "P2"), Command("next update", "30m"))
    assert reply.text == "DB restored on replica"


def test_resolved_reply_text_is_the_resolution_steps() -> None:
    reply = parse_reply(load("resolved.eml"))
    assert_clean(reply)
    assert reply.commands == (Command("resolved", ""),)
    assert reply.text == (
        "Root cause: the WAL volume filled up after the nightly bulk import.\n"
        "Fix: moved the WAL to a 500 GB volume and added a disk alert at 80 %.\n"
        "Follow-up: postmortem on Thursday."
    )


# ---------------------------------------------------------------- auto replies and bounces


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("ooo_auto_submitted.eml", "Auto-Submitted: auto-replied"),
        ("x_autoreply.eml", "X-Autoreply: yes"),
        ("precedence_bulk.eml", "Precedence: bulk"),
    ],
)
def test_auto_replies(name: str, reason: str) -> None:
    reply = parse_reply(load(name))
    assert_clean(reply)
    assert reply.is_auto_reply and not reply.is_bounce
    assert reply.reason == reason
    assert reply.bounced_recipients == ()


def test_dsn_bounce() -> None:
    reply = parse_reply(load("dsn_bounce.eml"), envelope_from="")
    assert_clean(reply)
    assert reply.is_bounce and not reply.is_auto_reply
    # The DSN's own Status and Diagnostic-Code: recorded against the recipient, shown by `show`.
    assert reply.reason == ("status 5.1.1; smtp; 550 5.1.1 <gone@example.org>: Recipient "
                            "address rejected: User unknown")
    # Final-Recipient and Original-Recipient name the same mailbox; the returned original's
    # own To: is not read.
    assert reply.bounced_recipients == ("gone@example.org",)


def _message(headers: str, body: str = "Hello\n") -> bytes:
    return (
        "From: Ana Lopez <ana@example.org>\nTo: incidents+1-x@example.org\nSubject: Re: INC-1\n"
        f"Message-ID: <m1@example.org>\n{headers}"
        "Content-Type: text/plain; charset=utf-8\n\n" + body
    ).encode("utf-8")


@pytest.mark.parametrize(
    ("headers", "envelope", "auto", "reason"),
    [
        ("Auto-Submitted: no\n", None, False, ""),
        ("Auto-Submitted: Auto-Generated; owner-email=x@example.org\n", None, True,
         "Auto-Submitted: auto-generated"),
        ("AUTO-SUBMITTED: auto-notified\n", None, True, "Auto-Submitted: auto-notified"),
        ("X-Autorespond: vacation\n", None, True, "X-Autorespond: vacation"),
        ("X-Auto-Response-Suppress: All\n", None, False, ""),
        ("X-Auto-Response-Suppress: OOF, AutoReply\n", None, False, ""),
        ("Precedence: junk\n", None, True, "Precedence: junk"),
        ("Precedence: auto_reply\n", None, True, "Precedence: auto_reply"),
        ("Precedence: list\n", None, False, ""),
        ("", "", True, "empty envelope sender (MAIL FROM:<>)"),
        ("", "<>", True, "empty envelope sender (MAIL FROM:<>)"),
        ("", "ana@example.org", False, ""),
        ("", None, False, ""),
        ("Return-Path: <>\n", None, True, "Return-Path: <>"),
        ("Return-Path: <>\n", "ana@example.org", False, ""),  # the SMTP envelope wins
    ],
)  # fmt: skip
def test_auto_reply_headers(headers: str, envelope: str | None, auto: bool, reason: str) -> None:
    reply = parse_reply(_message(headers), envelope_from=envelope)
    assert (reply.is_auto_reply, reply.is_bounce, reply.reason) == (auto, False, reason)


def test_x_failed_recipients_is_a_bounce() -> None:
    reply = parse_reply(_message("X-Failed-Recipients: Gone@Example.org, other@example.net\n"))
    assert reply.is_bounce and not reply.is_auto_reply
    assert reply.reason == "X-Failed-Recipients: Gone@Example.org, other@example.net"
    assert reply.bounced_recipients == ("gone@example.org", "other@example.net")


def test_delayed_dsn_names_no_failed_recipient() -> None:
    raw = (
        b"From: MAILER-DAEMON@mail.example.org\nSubject: Delayed Mail (still being retried)\n"
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=B\n\n"
        b"--B\nContent-Type: text/plain\n\nStill trying.\n"
        b"--B\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mail.example.org\n\n"
        b"Final-Recipient: rfc822; slow@example.net\nAction: delayed\nStatus: 4.4.1\n\n"
        b"Final-Recipient: rfc822; gone@example.net\nAction: failed\nStatus: 5.1.1\n"
        b"--B--\n"
    )
    reply = parse_reply(raw)
    assert reply.is_bounce
    assert reply.bounced_recipients == ("gone@example.net",)


def test_forwarded_bounce_attached_by_a_person_is_not_a_bounce() -> None:
    raw = (
        b"From: Ana <ana@example.org>\nSubject: Re: INC-1\n"
        b"Content-Type: multipart/mixed; boundary=OUT\n\n"
        b"--OUT\nContent-Type: text/plain\n\nThis address bounced, see attached.\n"
        b"--OUT\nContent-Type: message/rfc822\nContent-Disposition: attachment\n\n"
        b"From: MAILER-DAEMON@x.org\nSubject: Undelivered\n"
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=B\n\n"
        b"--B\nContent-Type: message/delivery-status\n\n"
        b"Final-Recipient: rfc822; gone@example.org\nAction: failed\n--B--\n"
        b"--OUT--\n"
    )
    reply = parse_reply(raw)
    assert not reply.is_bounce and not reply.is_auto_reply
    assert reply.text == "This address bounced, see attached."


# ---------------------------------------------------------------- extract_text rules

QUOTE = "\n> INC-42 checkout-api: complete downtime\n> Severity: P1\n"


@pytest.mark.parametrize(
    "body",
    [
        "Fixed.\n\nOn Tue, 24 Nov 2026 at 10:00, Ana <ana@x.org> wrote:\n" + QUOTE,
        "Fixed.\n\nOn Tue, 24 Nov 2026 at 10:00, Ana Lopez <\nana@x.org> wrote:\n" + QUOTE,
        "Fixed.\n\nLe mar. 24 nov. 2026 à 10:00, Ana <ana@x> a écrit :\n" + QUOTE,
        "Fixed.\n\nLe mar. 24 nov. 2026 à 10:00, Ana <ana@x> a écrit\u00a0:\n" + QUOTE,
        "Fixed.\n\nAm 24.11.2026 um 10:00 schrieb Ana <ana@x>:\n" + QUOTE,
        "Fixed.\n\nOn 24 Nov 2026, at 10:00, Ana <ana@x> wrote:\n" + QUOTE,
        "Fixed.\n\n-----Original Message-----\nFrom: Ana\nSent: Tuesday\n\nold text\n",
        "Fixed.\n\n-----Ursprüngliche Nachricht-----\nVon: Ana\nold text\n",
        "Fixed.\n\nFrom: Ana <ana@x>\nSent: Tuesday, November 24, 2026 10:00 AM\n"
        "To: Bob\nSubject: INC-42\n\nold text\n",
        "Fixed.\n\nDe : Ana <ana@x>\nEnvoyé : mardi 24 novembre 2026 10:00\nÀ : Bob\n"
        "Objet : INC-42\n\nold text\n",
        "Fixed.\n\nDe: Ana <ana@x>\nEnvoyé: mardi 24 novembre 2026 10:00\n\nold text\n",
        "Fixed.\n\nVon: Ana <ana@x>\nGesendet: Dienstag, 24. November 2026 10:00\nAn: Bob\n"
        "Betreff: INC-42\n\nold text\n",
        "Fixed.\n________________________________\nFrom: Ana\nold text\n",
        "Fixed.\n\n-- \nAna Lopez\nSRE, Example Org\n",
        "Fixed.\n\nSent from my iPhone\n",
        "Fixed.\n\nEnvoyé de mon iPhone\n",
        "Fixed.\n\nVon meinem iPhone gesendet\n",
        "Fixed.\n\nGet Outlook for iOS\n",
        "Fixed.\n" + QUOTE,
        "\r\nFixed.\r\n\r\nOn Tue, 24 Nov 2026 at 10:00, Ana <ana@x.org> wrote:\r\n> old\r\n",
    ],
)
def test_extract_text_removes_history_and_signatures(body: str) -> None:
    assert extract_text(body) == "Fixed."


@pytest.mark.parametrize(
    "body",
    [
        "On Tue, 24 Nov 2026 at 10:00, Ana <ana@x.org> wrote:\n> only quoted\n> history\n",
        "> quoted only\n>\n> more\n",
        "",
        "\n\n  \n",
        "-- \nAna\n",
    ],
)
def test_only_quoted_gives_empty_text(body: str) -> None:
    assert extract_text(body) == ""


def test_extract_text_keeps_what_the_sender_wrote() -> None:
    # Lists, "Warning:", "Thanks," and an "On …" sentence are content, not signatures.
    body = (
        "Warning: the mail relay is down, mail queue growing.\n"
        "- restarted postfix\n"
        "- failed over to relay-2\n"
        "On the replica, Bob wrote: nothing since 10:00\n"
        "Thanks, to the DBA team the replica is primary.\n"
    )
    assert extract_text(body) == body.strip()


def test_extract_text_inline_answers_below_the_quote() -> None:
    body = (
        "On 24/11/2026 10:00, Ana wrote:\n> Is the DB up?\n\nYes, since 10:05.\n\n"
        "> ETA?\n\nAbout an hour.\n-- \nBob\n"
    )
    assert extract_text(body) == "Yes, since 10:05.\n\nAbout an hour."


def test_extract_text_normalises_and_strips_controls() -> None:
    assert extract_text("a\x00b\r\nc\x1b[31m\td\x07") == "ab\nc[31m\td"


def test_html_to_text() -> None:
    html = (
        "<html><head><title>T</title><style>p{color:red}</style></head><body>"
        "<script>alert('x')</script><div>One &amp; <b>two</b></div><div><br></div>"
        "<div>caf&eacute;&nbsp;ok</div><p>para</p><ul><li>a</li><li> b</li></ul>"
        '<div class="gmail_quote">On x wrote:<blockquote>old</blockquote></div>'
        "</body></html>"
    )
    assert html_to_text(html) == "One & two\n\ncafé ok\npara\n- a\n- b"
    assert html_to_text('<p>keep</p><div id="appendonsend"></div><p>history</p>') == "keep"
    assert html_to_text("<p>unclosed <script>var x = 1;") == "unclosed"
    assert html_to_text("<<<>>><!--x--><![CDATA[y]]></p></div>&bogus;") == "<<<>>>\n&bogus;"


# ---------------------------------------------------------------- commands


def test_commands_at_the_top_with_blank_lines_between() -> None:
    text = (
        "Severity: p1\n\nIMPACT: complete downtime\neta: 2h, waiting for the vendor\n"
        "Next-Update: 14:30\nlead: me\ncommunicator: Ana Lopez <Ana@Example.org>\n"
        "scribe: bob@example.org\nimpacted: +Carol@example.org, dave@example.org\nsend now\n\n"
        "Status after the failover."
    )
    commands, rest = parse_commands(text)
    assert commands == (
        Command("severity", "P1"),
        Command("impact", "outage"),
        Command("eta", "2h, waiting for the vendor"),
        Command("next update", "14:30"),
        Command("lead", "me"),
        Command("communicator", "ana@example.org"),
        Command("scribe", "bob@example.org"),
        Command("impacted", "+carol@example.org"),
        Command("impacted", "+dave@example.org"),
        Command("send now", ""),
    )
    assert rest == "Status after the failover."


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("impact: degraded", Command("impact", "degraded")),
        ("impact: downtime", Command("impact", "outage")),
        ("impact: Outage", Command("impact", "outage")),
        ("next update: 1h30m", Command("next update", "1h30m")),
        ("next update: 45 min", Command("next update", "45m")),
        ("next update: 1 hour 30 minutes", Command("next update", "1h30m")),
        ("next update: 9:05 UTC", Command("next update", "09:05 UTC")),
        ("next update: 9:05", Command("next update", "09:05")),
        ("severity: high", Command("severity", "P1")),
        ("severity: 3", Command("severity", "P3")),
        ("Resolved.", Command("resolved", "")),
        ("SEND NOW", Command("send now", "")),
    ],
)
def test_command_values(line: str, command: Command) -> None:
    assert parse_commands(line) == ((command,), "")


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("severity: P9\nDB is back", "is not a severity"),
        ("impact: somewhat bad\nDB is back", "is not an impact"),
        ("next update: soon\nDB is back", "is not a duration"),
        ("next update: 25:00\nDB is back", "is not a time of day"),
        ("next update: 3000000d\nDB is back", "is too far ahead"),
        ("lead: bob\nDB is back", "has no @"),
        ("scribe: bob@example.org.\nDB is back", "is not a domain name"),
        ("impacted: +carol@example.org, a..b@example.org\nDB is back", "follow another dot"),
        ("eta:\nDB is back", "needs a value"),
    ],
)
def test_a_command_with_a_bad_value_is_refused_on_its_own_line(text: str, why: str) -> None:
    parsed = parse(text)
    assert parsed.commands == () and parsed.text == "DB is back"
    [refused] = parsed.refused
    assert refused.line == text.split("\n")[0] and why in refused.reason


@pytest.mark.parametrize("text", ["foo: bar\nDB is back", "send now please\nDB is back",
                                  "Update: the index is back\nok", "Lead engineer says hi",
                                  "ETA unknown so far", "Impact is small", "Severities: all"])
def test_unknown_keys_and_sentences_stay_in_the_text(text: str) -> None:
    assert parse_commands(text) == ((), text)
    assert parse(text).lookalikes == () and parse(text).refused == ()


def test_one_bad_line_does_not_turn_the_lines_below_into_text() -> None:
    parsed = parse("next update: 25:00\nseverity: P2\nsend now\n\nDB restored")
    assert parsed.commands == (Command("severity", "P2"), Command("send now", ""))
    assert [r.line for r in parsed.refused] == ["next update: 25:00"]
    assert parsed.text == "DB restored"


@pytest.mark.parametrize(("line", "closest"), [
    ("severty: P3", "severity"), ("sevrity P2", "severity"), ("severity P2", "severity"),
    ("Next Updte: 30m", "next update"), ("nextupdate: 30m", "next update"),
    ("resolvd", "resolved"), ("sned now", "send now"), ("impcat: outage", "impact"),
    ("resolved: yes", "resolved"),
])
def test_look_alike_commands_name_the_closest_one(line: str, closest: str) -> None:
    parsed = parse(f"{line}\nDB is back")
    assert parsed.commands == ()
    assert [(la.line, la.suggestion) for la in parsed.lookalikes] == [(line, closest)]


def test_declarations_and_replies_share_the_parser_and_the_spellings() -> None:
    parsed = parse("service: learn\nseverity: high\nimpact: full outage\nnext steps: a, b\n"
                   "Learn is down", DECLARATION_FIELDS)
    assert parsed.commands == (Command("service", "learn"), Command("severity", "P1"),
                               Command("impact", "outage"), Command("next steps", "a, b"))
    assert parsed.text == "Learn is down"
    assert severity_of("p 2") == "P2" and impact_of("Complete Downtime") == "outage"


def test_invisible_characters_do_not_hide_commands() -> None:
    commands, rest = parse_commands("\ufeffseverity: P2\n\u200bsend now\nok")
    assert commands == (Command("severity", "P2"), Command("send now", ""))
    assert rest == "ok"


def test_parsing_stops_at_the_first_non_command_line() -> None:
    commands, rest = parse_commands("severity: P2\nDB restored.\nseverity: P1")
    assert commands == (Command("severity", "P2"),)
    assert rest == "DB restored.\nseverity: P1"


def test_resolved_takes_the_rest_verbatim() -> None:
    commands, rest = parse_commands("impact: degraded\nresolved\n\nseverity: P3\nRolled back.")
    assert commands == (Command("impact", "degraded"), Command("resolved", ""))
    assert rest == "severity: P3\nRolled back."


# ---------------------------------------------------------------- hostile input


def test_thousands_of_nested_multiparts() -> None:
    head = b"From: a@example.org\r\nSubject: bomb\r\nMIME-Version: 1.0\r\n"
    body, tail = b"", b""
    for i in range(5000):
        body += b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
        tail = b"\r\n--b%d--\r\n" % i + tail
    raw = head + body + b"Content-Type: text/plain\r\n\r\nhello\r\n" + tail
    started = time.monotonic()
    reply = parse_reply(raw)
    assert time.monotonic() - started < 2
    assert_clean(reply)
    assert reply.sender == "a@example.org" and reply.subject == "bomb"


def test_nesting_just_past_the_recursion_limit_of_the_email_parser() -> None:
    # 150 levels: under our MIME-bomb threshold, over what the email parser can recurse.
    raw = b"From: a@example.org\nSubject: deep\n"
    for i in range(150):
        raw += b"Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n" % (i, i)
    raw += b"Content-Type: text/plain\n\nhello\n"
    reply = parse_reply(raw)
    assert_clean(reply)
    assert reply.subject == "deep"


def test_broken_boundary_keeps_the_body() -> None:
    raw = (
        b"From: Ana <ana@example.org>\nSubject: x\n"
        b'Content-Type: multipart/alternative; boundary="never-used"\n\nDB restored.\n'
    )
    assert parse_reply(raw).text == "DB restored."


def test_eight_bit_and_broken_rfc2047_headers() -> None:
    raw = (
        b"From: \xc3\x89lodie \xff <ELODIE@example.org>\n"
        b"Subject: caf\xc3\xa9 =?utf-8?b?!!!?= =?x-unknown?q?caf=E9?= =?utf-8?q?=E2=98=95?=\n"
        b"Message-ID: <id\r\n with space@example.org>\n\nbody\n"
    )
    reply = parse_reply(raw)
    assert_clean(reply)
    assert reply.sender == "elodie@example.org"
    # Broken words stay literal; whitespace between two encoded words is not shown (RFC 2047).
    assert reply.subject == "café =?utf-8?b?!!!?= café☕"
    assert reply.message_id == "<id with space@example.org>"


def test_header_injection_in_encoded_subject_is_flattened() -> None:
    raw = b"From: a@example.org\nSubject: =?utf-8?q?hi=0D=0ABcc:_x@evil.example?=\n\nbody\n"
    reply = parse_reply(raw)
    assert reply.subject == "hi Bcc: x@evil.example"


def test_encoded_display_name_cannot_pose_as_another_address() -> None:
    raw = b"From: =?utf-8?q?boss@example.org?= <intruder@evil.example>\nSubject: x\n\nhi\n"
    reply = parse_reply(raw)
    assert reply.sender == "intruder@evil.example"
    assert reply.sender_name == "boss@example.org"  # shown as the name it is


def test_from_with_a_bare_address_and_comment() -> None:
    reply = parse_reply(b"From: Ana@Example.org (Ana Lopez)\nSubject: x\n\nhi\n")
    assert (reply.sender, reply.sender_name) == ("ana@example.org", "Ana Lopez")


@pytest.mark.parametrize(
    ("charset", "payload", "text"),
    [
        ("us-ascii", "café".encode(), "café"),  # says ASCII, is UTF-8
        ("utf-8", "café".encode("latin-1"), "café"),  # says UTF-8, is Latin-1
        ("x-made-up", "café".encode(), "café"),
        ("unicode_escape", b"\\u00e9\\ud800", "\\u00e9\\ud800"),  # not decoded as escapes
        ("utf-16", b"\x00\xd8a", "Øa"),  # a lone surrogate: not UTF-16 after all
    ],
)
def test_lying_charsets(charset: str, payload: bytes, text: str) -> None:
    raw = (
        b"From: a@example.org\nSubject: x\nContent-Type: text/plain; charset="
        + charset.encode()
        + b"\nContent-Transfer-Encoding: 8bit\n\n"
        + payload
        + b"\n"
    )
    reply = parse_reply(raw)
    assert_clean(reply)
    assert reply.text == text


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00\xff\xfe",
        b"no headers at all",
        b"From:\nSubject:\n\n",
        b"From: <>\n\n",
        b"From: not an address\n\nhi",
        b"Content-Type: text/plain; charset*=''%ff%fe\n\nx",
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=\n\n--\n",
        b"Content-Transfer-Encoding: base64\n\n!!!not base64===\n",
        b"Content-Type: text/html\n\n<script>",
        b"\n" * 10_000,
        b"From: " + b"a" * 100_000 + b"\n\nx",
    ],
)
def test_degenerate_input_never_raises(raw: bytes) -> None:
    assert_clean(parse_reply(raw))


def test_long_attribution_like_lines_are_cheap() -> None:
    body = ("On " + "a b " * 2_500 + "wrote:\n") * 50 + ("> On " + "x " * 5_000 + "\n") * 50
    started = time.monotonic()
    extract_text(body)
    assert time.monotonic() - started < 2


# ---------------------------------------------------------------- properties

_FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FAST
@given(st.binary(max_size=3000))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    assert_clean(parse_reply(raw))


_HEADER_NAMES = st.sampled_from(
    [
        "From",
        "Subject",
        "Message-ID",
        "Content-Type",
        "Content-Transfer-Encoding",
        "Auto-Submitted",
        "Precedence",
        "X-Failed-Recipients",
        "Content-Disposition",
    ]
)


@_FAST
@given(
    st.lists(st.tuples(_HEADER_NAMES, st.text(max_size=80)), max_size=8),
    st.binary(max_size=300),
    st.one_of(st.none(), st.text(max_size=20)),
)
def test_arbitrary_header_values_never_raise(
    headers: list[tuple[str, str]], body: bytes, envelope: str | None
) -> None:
    raw = b"".join(
        name.encode() + b": " + value.encode("utf-8", "surrogatepass") + b"\r\n"
        for name, value in headers
    )
    assert_clean(parse_reply(raw + b"\r\n" + body, envelope_from=envelope))


@_FAST
@given(st.text(max_size=500))
def test_text_functions_never_raise(text: str) -> None:
    for out in (extract_text(text), html_to_text(text), parse_commands(text)[1]):
        assert "\r" not in out and not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", out)


_OWN_WORDS = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ.,\n", min_size=1, max_size=200
).filter(lambda s: re.search(r"[A-Za-z]", s))
_ATTRIBUTION = "\n\nOn Mon, 1 Jan 2026 at 10:00, X <x@example.org> wrote:\n> "


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text))


@_FAST
@given(_OWN_WORDS, st.text(max_size=300))
def test_quoted_words_never_leak(own: str, quoted: str) -> None:
    # Every quoted line carries its "> ": unquoted text below a quote is a bottom-posted
    # answer, and is kept.
    body = own + _ATTRIBUTION + "\n> ".join(quoted.replace("\r\n", "\n").replace("\r", "\n").split("\n"))
    only_quoted = _words(quoted) - _words(own)
    assert not _words(extract_text(body)) & only_quoted
    raw = (
        b"From: Ana <ana@example.org>\r\nSubject: Re: INC-1\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(body.encode("utf-8"))
    )
    reply = parse_reply(raw)
    assert not _words(reply.text) & only_quoted
    assert not _words(" ".join(c.value for c in reply.commands)) & only_quoted


# ---------------------------------------------------------------- the From at DATA

def _from_by_full_parse(raw: bytes) -> str:
    """The From address as read from the whole header block (what header_sender did first)."""
    from email.parser import BytesParser

    from mailflow.replies.headers import _header, _parse_from
    return _parse_from(_header(BytesParser(policy=compat32).parsebytes(
        raw, headersonly=True), "from"))[1]


def test_header_sender_reads_the_fixtures_as_the_full_header_parse() -> None:
    from mailflow.replies import header_sender
    checked = 0
    for path in sorted(FIXTURES.rglob("*")):
        if path.is_file():
            raw = path.read_bytes()
            assert header_sender(raw) == _from_by_full_parse(raw), path.name
            checked += bool(header_sender(raw))
    assert checked >= 20  # most fixtures have a From


_HEADER_LINES = st.sampled_from([
    b"From: Ana Lima <ana@example.org>", b"FROM: bob@example.org", b"from:eve@example.org",
    b"From: =?utf-8?q?Ch=C3=B4e?= <chloe@example.org>", b"From: \"Stone, Bob\" <bob@example.org>",
    b"From :dan@example.org", b"From dan@example.org Mon Dec  7 09:00:00 2026",
    b"  <folded@example.org>", b"\tcontinued", b"Subject: Re: [INC-1] a", b"To: x@example.org",
    b"X-Odd\tName: 1", b": no name", b"not a header line", b"Sender: s@example.org",
    b"From: caf\xc3\xa9 <cafe@example.org>", b"Reply-To: r@example.org", b"",
    b"From: Ana Lima", b"From:", b" <ana@example.org>", b"\t=?utf-8?q?Lima?= <lima@example.org>",
])


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_HEADER_LINES, max_size=8), st.sampled_from([b"\r\n", b"\n", b"\r"]),
       st.booleans())
def test_header_sender_reads_any_header_block_as_the_full_parse(
        lines: list[bytes], end: bytes, body: bool) -> None:
    # Only the From field is parsed at DATA: for every block, plain or not, the address must
    # be the one the parse of the whole block gives.
    from mailflow.replies import header_sender
    raw = end.join(lines) + (end + end + b"From: body@example.org" + end if body else b"")
    assert header_sender(raw) == _from_by_full_parse(raw)
