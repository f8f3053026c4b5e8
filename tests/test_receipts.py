"""Reply commands answered, through the real inbound SMTP server on loopback: per-line
handling, held look-alikes, refused values, time-zone `next update`, receipts read back
from the SMTP sink, and the limits on floods (send now, strangers, stored bodies,
declarations)."""

from __future__ import annotations

import shlex
import subprocess
from datetime import timedelta
from email.message import EmailMessage

import pytest

from mailflow import scheduler
from mailflow.app import Mailflow
from mailflow.config import load_config
from mailflow.models import Entry, Incident, InMessage, OutMessage
from mailflow.testing import Sink, write_config

from .helpers import NOW, Inbound, by_rcpt, posted, reply, reply_to_address, text_of


@pytest.fixture
def incident(announced: Incident) -> Incident:
    return announced


def delivered_receipts(app: Mailflow, sink: Sink, to: str) -> list[EmailMessage]:
    """Deliver the outbox and read the receipts back from the SMTP sink."""
    app.deliver_now(NOW)
    return [m for m in by_rcpt(sink).get(to, []) if m["X-Mailflow-Kind"] == "receipt"]


BOB = "Bob Stone <bob@example.org>"  # in contacts.yaml, time zone America/New_York


def test_one_bad_line_never_turns_valid_lines_into_text(app, sink, incident, inbound) -> None:  # noqa: ANN001
    msg = reply("next update: 25:00\nseverity: P2\n\nDB restored on the replica", sender=BOB)
    code, _ = inbound.send(msg, reply_to_address(app, incident))
    assert code == 250
    assert Incident.get_by_id(incident.id).severity == "P2"
    [entry] = posted(incident)
    assert entry.text.startswith("DB restored on the replica")
    assert "25:00" not in entry.text
    [receipt] = delivered_receipts(app, sink, "bob@example.org")
    body = text_of(receipt)
    assert "Severity: P1 → P2" in body
    assert "next update: 25:00: '25:00' is not a time of day" in body


@pytest.mark.parametrize(("line", "closest"), [("severty: P3", "severity:"),
                                               ("sevrity P2", "severity:"),
                                               ("resolvd", "resolved")])
def test_a_look_alike_command_is_held_and_the_sender_told(app, sink, incident, inbound,  # noqa: ANN001
                                                          line, closest) -> None:
    msg = reply(f"{line}\n\nThe DB is fine now", sender=BOB)
    code, _ = inbound.send(msg, reply_to_address(app, incident))
    assert code == 250
    fresh = Incident.get_by_id(incident.id)
    assert (fresh.severity, fresh.status) == ("P1", "open")
    assert posted(incident) == [], "held: not posted to everyone"
    assert [e.text for e in posted(incident, "held")] == [
        f"reply held (look-alike command: {line})"]
    [receipt] = delivered_receipts(app, sink, "bob@example.org")
    assert f"did you mean `{closest}`?" in text_of(receipt)
    assert "nothing was posted and nothing changed" in text_of(receipt)
    # Only the receipt left: nobody else got anything.
    assert {r.rcpt_tos[0] for r in sink.received} == {"bob@example.org"}


def test_values_that_cannot_be_applied_are_refused_and_the_text_posted(  # noqa: ANN001
        app, sink, incident, inbound) -> None:
    msg = reply("next update: 3000000d\nlead: bob@example.org.\nscribe: a..b@example.org\n"
                "impacted: +ok@example.org, bad.@example.org\n\nStill on it", sender=BOB)
    code, answer = inbound.send(msg, reply_to_address(app, incident))
    assert code == 250, answer  # never a 451 that the MTA retries for days
    fresh = Incident.get_by_id(incident.id)
    assert fresh.lead == "ana@example.org" and fresh.scribe is None
    assert "ok@example.org" not in fresh.impacted, "one bad entry refuses the whole line"
    [entry] = posted(incident)
    assert entry.text == "Still on it"
    body = text_of(delivered_receipts(app, sink, "bob@example.org")[0])
    for why in ("is too far ahead", "'example.org.' is not a domain name",
                "nor follow another dot", "bad.@example.org"):
        assert why in body


def test_next_update_is_read_in_the_senders_time_zone(app, sink, incident, inbound) -> None:  # noqa: ANN001
    # NOW is 10:20 UTC = 05:20 in New York (Bob's time zone in contacts.yaml).
    code, _ = inbound.send(reply("next update: 6:00", sender=BOB),
                           reply_to_address(app, incident))
    assert code == 250
    assert Incident.get_by_id(incident.id).next_comm_at == NOW.replace(hour=11, minute=0)
    [entry] = posted(incident, "schedule")
    assert entry.text == ("next communication moved to 2026-11-24 11:00 UTC "
                          "(06:00 America/New_York)")
    body = text_of(delivered_receipts(app, sink, "bob@example.org")[0])
    assert "Next communication: 2026-11-24 11:00 UTC (06:00 America/New_York)" in body


def test_a_time_already_past_today_is_refused_not_taken_for_tomorrow(  # noqa: ANN001
        app, sink, incident, inbound) -> None:
    before = Incident.get_by_id(incident.id).next_comm_at
    code, _ = inbound.send(reply("next update: 05:00\n\nStill on it", sender=BOB),
                           reply_to_address(app, incident))
    assert code == 250
    assert Incident.get_by_id(incident.id).next_comm_at == before
    body = text_of(delivered_receipts(app, sink, "bob@example.org")[0])
    assert ("05:00 America/New_York has already passed today (it is 05:20 America/New_York "
            "on 2026-11-24)") in body
    assert [e.text for e in posted(incident)] == ["Still on it"]


def test_a_receipt_is_an_auto_reply_in_the_senders_thread(app, sink, incident, inbound) -> None:  # noqa: ANN001
    msg = reply("severity: P2", sender=BOB)
    code, _ = inbound.send(msg, reply_to_address(app, incident))
    assert code == 250
    [receipt] = delivered_receipts(app, sink, "bob@example.org")
    assert receipt["Auto-Submitted"] == "auto-replied"
    assert receipt["In-Reply-To"] == msg["Message-ID"]
    assert receipt["Subject"] == msg["Subject"]  # already "Re: …"
    assert receipt["Reply-To"] == reply_to_address(app, incident)
    [received] = [r for r in sink.received if r.rcpt_tos == ["bob@example.org"]]
    assert received.mail_from in ("", "<>"), "null envelope sender: a receipt never bounces back"
    html = receipt.get_body(("html",)).get_content()
    assert "Severity: P1 → P2" in html and "<script" not in html


def test_plain_text_gets_no_receipt_unless_configured(app, sink, incident, inbound,  # noqa: ANN001
                                                      project) -> None:
    code, _ = inbound.send(reply("Just text", sender=BOB), reply_to_address(app, incident))
    assert code == 250
    assert delivered_receipts(app, sink, "bob@example.org") == []
    write_config(project, sink.port, '[inbound]\nreceipts = "always"\n')
    app.config = load_config(project / "mailflow.toml")
    code, _ = inbound.send(reply("More text", sender=BOB), reply_to_address(app, incident))
    assert code == 250
    [receipt] = delivered_receipts(app, sink, "bob@example.org")
    assert "Your text was posted" in text_of(receipt)


@pytest.mark.parametrize("headers", [{"Auto-Submitted": "auto-replied"},
                                     {"Precedence": "bulk"}])
def test_receipts_never_go_to_auto_replies(app, sink, incident, inbound, headers) -> None:  # noqa: ANN001
    msg = reply("severty: P3\nsend now", sender=BOB)
    for key, value in headers.items():
        msg[key] = value
    code, _ = inbound.send(msg, reply_to_address(app, incident))
    assert code == 250
    assert OutMessage.select().where(OutMessage.kind == "receipt").count() == 0


def test_receipts_never_go_to_our_own_address(app, sink, incident, inbound, project) -> None:  # noqa: ANN001
    # Our own address made a participant (a misconfiguration): still no receipt to it.
    contacts = project / "contacts.yaml"
    contacts.write_text(contacts.read_text().replace(
        "people:\n", "people:\n  - {name: Desk, email: incidents@example.org}\n"))
    app.reload()
    code, _ = inbound.send(reply("severity: P2", sender="incidents@example.org"),
                           reply_to_address(app, incident), mail_from="incidents@example.org")
    assert code == 250
    assert OutMessage.select().where(OutMessage.kind == "receipt").count() == 0


# --- floods -------------------------------------------------------------------------------

def test_send_now_is_honoured_once_per_interval(app, sink, incident, inbound) -> None:  # noqa: ANN001
    address = reply_to_address(app, incident)
    for i in range(5):
        code, _ = inbound.send(reply(f"send now\n\nStep {i}", sender=BOB), address)
        assert code == 250
    updates = OutMessage.select().where(OutMessage.kind == "update")
    assert len({m.created_at for m in updates}) == 1, "one update communication, not five"
    [first, *later] = delivered_receipts(app, sink, "bob@example.org")
    assert "send now: the update went out" in text_of(first)
    assert len(later) == 4
    assert all("honoured once every 5m per incident" in text_of(r) for r in later)
    inbound.now = NOW + timedelta(minutes=5)
    code, _ = inbound.send(reply("send now\n\nLater", sender=BOB), address)
    updates = OutMessage.select().where(OutMessage.kind == "update")
    assert len({m.created_at for m in updates}) == 2, "after send_now_every, honoured again"


def test_strangers_give_the_lead_one_digest_an_hour(app, sink, incident, inbound) -> None:  # noqa: ANN001
    address = reply_to_address(app, incident)
    strangers = [f"stranger{i}@evil.example" for i in range(30)] + ["x`id`@evil.example"]
    for s in strangers:
        code, _ = inbound.send(reply("I fixed it", sender=s), address, mail_from=s)
        assert code == 550
    notices = OutMessage.select().where(OutMessage.kind == "notice")
    assert [m.recipient for m in notices] == ["ana@example.org"], "one, not one per stranger"
    assert Entry.select().where(Entry.kind == "refused").count() == 31
    # An hour later the scheduler sends one digest of the others.
    scheduler.run_due(app, NOW + timedelta(minutes=59))
    assert OutMessage.select().where(OutMessage.kind == "notice").count() == 1
    scheduler.run_due(app, NOW + timedelta(hours=1))
    assert OutMessage.select().where(OutMessage.kind == "notice").count() == 2
    app.deliver_now(NOW + timedelta(hours=1))
    [first, digest] = [m for m in by_rcpt(sink)["ana@example.org"]
                       if m["X-Mailflow-Kind"] == "notice"]
    assert "stranger0@evil.example" in text_of(first)
    text = " ".join(text_of(digest).split())
    assert "30 unknown senders" in text and "stranger29@evil.example" in text
    # The suggested command is safe to paste: the backticks are not run by the shell.
    command = text.split("add them (check each address first): `", 1)[1].split("`, or", 1)[0]
    assert command.startswith("mailflow add-recipient INC-1 ")
    args = shlex.split(command)
    assert "x`id`@evil.example" in args
    out = subprocess.run(["bash", "-c", "printf '%s\\n' " + command.split(" ", 1)[1]],
                         capture_output=True, text=True, check=True).stdout
    assert "x`id`@evil.example" in out.splitlines() and "uid=" not in out


def test_auto_reply_bodies_are_stored_only_up_to_a_cap(app, sink, incident) -> None:  # noqa: ANN001
    server = Inbound(app, max_size=4 * 1024 * 1024)  # a 2 MB auto-reply gets through SMTP
    server.server.start()
    try:
        msg = reply("out of office " * 150_000, sender=BOB, Auto_Submitted="auto-replied")
        code, _ = server.send(msg, reply_to_address(app, incident))
    finally:
        server.server.stop()
    assert code == 250
    [stored] = InMessage.select()
    assert stored.outcome == "auto-reply" and len(stored.content) == 64 * 1024


DECLARATION = "service: learn\nseverity: P1\nimpact: outage\n\nLearn returns 502 everywhere"


def test_a_declaration_is_idempotent(app, sink, inbound) -> None:  # noqa: ANN001
    first = reply(DECLARATION, sender="ana@example.org")
    for _ in range(3):  # an MTA retrying the same message
        code, answer = inbound.send(first, "incidents@example.org", mail_from="ana@example.org")
        assert code == 250
    assert b"already declared as INC-1" in answer
    resent = reply(DECLARATION, sender="ana@example.org", X_Resent="1")  # new Message-ID
    assert resent["Message-ID"] != first["Message-ID"]
    code, answer = inbound.send(resent, "incidents@example.org", mail_from="ana@example.org")
    assert code == 250 and b"already declared as INC-1" in answer
    assert Incident.select().count() == 1
    inbound.now = NOW + timedelta(hours=1, minutes=1)
    code, _ = inbound.send(resent, "incidents@example.org", mail_from="ana@example.org")
    assert Incident.select().count() == 1, "the same Message-ID never declares twice"
    later = reply(DECLARATION, sender="ana@example.org", X_Again="2")
    code, answer = inbound.send(later, "incidents@example.org", mail_from="ana@example.org")
    assert code == 250 and b"declared INC-2" in answer


def test_a_declaration_with_a_look_alike_field_is_refused_with_the_closest(  # noqa: ANN001
        app, sink, inbound) -> None:
    msg = reply("service: learn\nsevrity: P1\nimpact: outage\n\nLearn is down",
                sender="ana@example.org")
    code, _ = inbound.send(msg, "incidents@example.org", mail_from="ana@example.org")
    assert code == 250
    assert Incident.select().count() == 0
    app.deliver_now(NOW)
    [answer] = by_rcpt(sink)["ana@example.org"]
    assert "did you mean `severity:`?" in answer.get_content()
