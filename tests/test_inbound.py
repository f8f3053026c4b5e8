"""Replies through the real inbound SMTP server on loopback: codes, and what gets posted."""

from __future__ import annotations

from datetime import timedelta

import pytest

from mailflow import incidents as inc
from mailflow import tokens
from mailflow.app import Mailflow
from mailflow.models import Incident, InMessage, OutMessage, Recipient
from mailflow.testing import Sink

from .conftest import T0
from .helpers import NOW, ORANGE, by_rcpt, declare, highlighted, html_of, posted, reply, reply_to


@pytest.fixture
def incident(app: Mailflow, sink: Sink) -> Incident:
    created = declare(app)
    app.deliver_now(T0)
    return created


def test_a_known_contact_posts_an_update(app, sink, incident, inbound) -> None:  # noqa: ANN001
    body = ("Found it: the sessions index is corrupt.\n\n"
            "On Tue, 24 Nov 2026 at 10:00, Incident Desk <incidents@example.org> wrote:\n"
            "> INCIDENT INC-1 (P1, complete downtime)\n> old text\n")
    code, answer = inbound.send(reply(body), reply_to(sink))
    assert code == 250, answer
    [entry] = posted(incident)
    assert entry.text == "Found it: the sessions index is corrupt."
    assert entry.author == "bob@example.org"
    assert entry.at == NOW
    assert InMessage.select().count() == 1, "the raw reply is kept with its effect"


def test_commands_change_state_and_send_now(app, sink, incident, inbound) -> None:  # noqa: ANN001
    body = "severity: P2\nnext update: 30m\nsend now\n\nDB restored on the replica"
    code, _ = inbound.send(reply(body), reply_to(sink))
    assert code == 250
    fresh = Incident.get_by_id(incident.id)
    assert fresh.severity == "P2"
    # One reply, one entry: the text first, the changes in one compact line below it.
    [entry] = posted(incident)
    assert entry.text == ("DB restored on the replica\n\nSeverity: P1 → P2 · Next "
                          "communication: 2026-11-24 10:50 UTC (05:50 America/New_York)")
    assert entry.author == "bob@example.org"
    assert posted(incident, "change") == []
    # `send now` sent the update immediately; the next mark is the one the sender gave.
    assert fresh.next_comm_at == NOW + timedelta(minutes=30)
    sink.clear()
    app.deliver_now(NOW)
    html = html_of(by_rcpt(sink)["ops-team@example.org"][0])
    new = " | ".join(highlighted(html, ORANGE))
    assert "DB restored on the replica" in new and "P2 (medium" in new


def test_resolved_reply_sends_the_solved_email(app, sink, incident, inbound) -> None:  # noqa: ANN001
    code, _ = inbound.send(reply("resolved\nRebuilt the index; verified logins"), reply_to(sink))
    assert code == 250
    fresh = Incident.get_by_id(incident.id)
    assert fresh.status == "resolved"
    assert fresh.resolution == "Rebuilt the index; verified logins"
    assert OutMessage.select().where(OutMessage.kind == "solved").count() == 3


def test_a_stranger_is_refused_and_the_lead_told_once(app, sink, incident, inbound) -> None:  # noqa: ANN001
    for _ in range(2):
        code, answer = inbound.send(reply("I fixed it", sender="mallory@evil.example"),
                                    reply_to(sink), mail_from="mallory@evil.example")
        assert code == 550 and b"may not post" in answer
    assert posted(incident) == []
    notices = OutMessage.select().where(OutMessage.kind == "notice")
    assert [m.recipient for m in notices] == ["ana@example.org"]
    assert len(posted(incident, "refused")) == 2


def test_forged_and_foreign_addresses_are_refused_at_rcpt(app, sink, incident, inbound) -> None:  # noqa: ANN001
    good = reply_to(sink)
    forged = good.replace(tokens.sign(incident.id, "test-secret-0123456789"),
                          tokens.sign(incident.id, "wrong-secret"))
    for address in (forged, "incidents+1-00000000000000000000@example.org",
                    "someone@example.org", "incidents@other.example",
                    tokens.reply_address("incidents", "example.org", 99, "test-secret-0123456789")):
        code, _ = inbound.send(reply("hello"), address)
        assert code == 550, address
    assert posted(incident) == []


@pytest.mark.parametrize("header", [
    {"Auto_Submitted": "auto-replied"},
    {"X_Autoreply": "yes"},
    {"X_Autorespond": "yes"},
    {"Precedence": "bulk"},
    {"Precedence": "junk"},
    {"Precedence": "auto_reply"},
])
def test_auto_replies_are_never_posted(app, sink, incident, inbound, header) -> None:  # noqa: ANN001
    code, _ = inbound.send(reply("I am out of the office until Monday.", **header),
                           reply_to(sink))
    assert code == 250
    assert posted(incident) == []
    assert len(posted(incident, "auto-reply")) == 1


def test_empty_envelope_sender_is_not_posted(app, sink, incident, inbound) -> None:  # noqa: ANN001
    code, _ = inbound.send(reply("Vacation"), reply_to(sink), mail_from="")
    assert code == 250
    assert posted(incident) == []


def test_a_bounce_is_recorded_against_its_recipient(app, sink, incident, inbound) -> None:  # noqa: ANN001
    dsn = (
        b"From: MAILER-DAEMON@example.org\r\nTo: incidents@example.org\r\n"
        b"Subject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        b"--B\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
        b"--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.org\r\n"
        b"\r\nFinal-Recipient: rfc822; ops-team@example.org\r\nAction: failed\r\n"
        b"Status: 5.1.1\r\n--B--\r\n"
    )
    code, _ = inbound.send(dsn, reply_to(sink), mail_from="")
    assert code == 250
    assert posted(incident) == []
    assert Recipient.get(Recipient.email == "ops-team@example.org").status == "bounced"
    assert Recipient.get(Recipient.email == "ana@example.org").status == "active"
    [entry] = posted(incident, "bounce")
    assert "ops-team@example.org" in entry.text


def test_oversized_reply_gets_552(app, sink, incident, inbound) -> None:  # noqa: ANN001
    code, answer = inbound.send(reply("xxxxxxxxxxxxxxxxxxx\n" * 5000), reply_to(sink))
    assert code == 552, answer
    assert posted(incident) == []


def test_participants_not_in_contacts_may_post(app, sink, incident, inbound) -> None:  # noqa: ANN001
    code, _ = inbound.send(reply("Students still see 502", sender="student-council@example.org"),
                           reply_to(sink, "student-council@example.org"),
                           mail_from="student-council@example.org")
    assert code == 250
    assert [e.author for e in posted(incident)] == ["student-council@example.org"]


def test_the_same_reply_twice_posts_once(app, sink, incident, inbound) -> None:  # noqa: ANN001
    msg = reply("Restarting nginx")
    assert inbound.send(msg, reply_to(sink))[0] == 250
    assert inbound.send(msg, reply_to(sink))[0] == 250
    assert len(posted(incident)) == 1


def test_reply_html_and_header_injection_do_not_reach_the_next_email(app, sink, incident,  # noqa: ANN001
                                                                      inbound) -> None:
    msg = reply("<script>alert(1)</script> fixed?\r\nBcc: victim@example.com")
    assert inbound.send(msg, reply_to(sink))[0] == 250
    sink.clear()
    inc.send_update(app, Incident.get_by_id(incident.id), NOW)
    app.deliver_now(NOW)
    for r in sink.received:
        assert r.rcpt_tos[0] != "victim@example.com"
        assert r.message["Bcc"] is None
        assert "<script>" not in html_of(r.message)


def test_declare_by_email(app, sink, inbound) -> None:  # noqa: ANN001
    msg = reply("service: learn\nseverity: P1\nimpact: degraded\n\nLogins take 30 s\n",
                sender="Chloe Martin <chloe@example.org>")
    code, answer = inbound.send(msg, "incidents@example.org", mail_from="chloe@example.org")
    assert code == 250 and b"declared INC-1" in answer
    incident = Incident.get_by_id(1)
    assert (incident.service, incident.severity, incident.impact) == ("learn", "P1", "degraded")
    assert incident.summary == "Logins take 30 s"
    assert incident.lead == "chloe@example.org", "the sender leads"
    app.deliver_now(NOW)
    start = by_rcpt(sink)["chloe@example.org"][0]
    assert start["Subject"] == "[INC-1] ISC Learn Platform: degraded", "the reference comes back"


@pytest.mark.parametrize(("body", "why"), [
    ("severity: P1\nimpact: outage\n\nLogins fail", "missing `service:`"),
    ("service: learn\nseverity: P9\nimpact: outage\n\nLogins fail", "severity"),
    ("service: moon\nseverity: P1\nimpact: outage\n\nLogins fail", "no service 'moon'"),
])
def test_malformed_declaration_gets_an_explanation_and_no_incident(app, sink, inbound,  # noqa: ANN001
                                                                   body, why) -> None:
    msg = reply(body, sender="chloe@example.org")
    code, _ = inbound.send(msg, "incidents@example.org", mail_from="chloe@example.org")
    assert code == 250
    assert Incident.select().count() == 0
    app.deliver_now(NOW)
    [answer] = sink.messages()
    assert answer["To"] == "chloe@example.org"
    assert answer["Auto-Submitted"] == "auto-replied"
    assert answer["In-Reply-To"] == msg["Message-ID"]
    assert why in answer.get_content()
    assert sink.received[0].mail_from in ("", "<>"), "null sender: nobody's robot answers it"


def test_strangers_cannot_declare(app, sink, inbound) -> None:  # noqa: ANN001
    msg = reply("service: learn\nseverity: P1\nimpact: outage\n\nx", sender="mallory@evil.example")
    code, _ = inbound.send(msg, "incidents@example.org", mail_from="mallory@evil.example")
    assert code == 550
    assert Incident.select().count() == 0


def test_outgoing_mail_bounces_to_the_incident_address(app, sink, incident) -> None:  # noqa: ANN001
    envelope_from = sink.received[0].mail_from
    assert envelope_from == reply_to(sink), "bounces come back with the incident's token"


def test_a_bounce_is_recorded_but_cannot_silence_a_recipient(app, sink, incident,  # noqa: ANN001
                                                             inbound) -> None:
    dsn = (
        b"From: MAILER-DAEMON@example.org\r\nTo: incidents@example.org\r\nSubject: Undelivered\r\n"
        b'MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; '
        b'boundary="B"\r\n\r\n--B\r\nContent-Type: message/delivery-status\r\n\r\n'
        b"Reporting-MTA: dns; mx.example.org\r\n\r\nFinal-Recipient: rfc822; ops-team@example.org\r\n"
        b"Action: failed\r\nStatus: 5.1.1\r\n--B--\r\n")
    assert inbound.send(dsn, reply_to(sink), mail_from="")[0] == 250
    sink.clear()
    inc.send_update(app, Incident.get_by_id(incident.id), NOW)
    app.deliver_now(NOW)
    assert "ops-team@example.org" in by_rcpt(sink), "anyone holding the token could forge it"


def test_a_forged_from_cannot_declare(app, sink, inbound) -> None:  # noqa: ANN001
    msg = reply("service: learn\nseverity: P0\nimpact: outage\n\nEverything is down",
                sender="ana@example.org")
    code, answer = inbound.send(msg, "incidents@example.org", mail_from="attacker@evil.example")
    assert code == 550 and b"envelope sender" in answer
    assert Incident.select().count() == 0


def test_role_and_impacted_commands(app, sink, incident, inbound) -> None:  # noqa: ANN001
    code, _ = inbound.send(reply("lead: me\nimpacted: +dean@example.org\n\nTaking over"),
                           reply_to(sink))
    assert code == 250
    fresh = Incident.get_by_id(incident.id)
    assert fresh.lead == "bob@example.org", "`lead: me` is the sender"
    assert "dean@example.org" in fresh.impacted
    assert Recipient.get(Recipient.email == "dean@example.org").reason.startswith(
        "because you are impacted")
    # One reply, one entry: the text, then both changes on one line.
    assert [e.text for e in posted(incident)] == [
        "Taking over\n\nLead: ana@example.org → bob@example.org"]
    # A new recipient is recorded, not broadcast (never carried in orange by an email).
    [added] = posted(incident, "recipient")
    assert added.text == "Added dean@example.org to the emails (impacted)"
    assert added.communicated_at is not None
