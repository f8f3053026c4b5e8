"""Who may change an incident, through the real inbound SMTP server on loopback.

Anyone who may post adds text; only the incident's roles and the people of contacts.yaml
change it, and only when the envelope sender is the From address.
"""

from __future__ import annotations

import os
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path

import pytest

from mailflow.app import Mailflow
from mailflow.models import Entry, Incident, OutMessage, Recipient
from mailflow.testing import Sink

from .conftest import T0
from .helpers import by_rcpt, declare, posted, reply, reply_to, text_of


@pytest.fixture
def incident(app: Mailflow, sink: Sink) -> Incident:
    created = declare(app)  # lead ana; student-council@example.org is impacted
    app.deliver_now(T0)
    return created


def receipts(to: str) -> list[EmailMessage]:
    from email import message_from_bytes, policy
    return [message_from_bytes(m.content, policy=policy.default)  # type: ignore[misc]
            for m in OutMessage.select().where((OutMessage.kind == "receipt")
                                               & (OutMessage.recipient == to))]


def body_of(msg: EmailMessage) -> str:
    return text_of(msg)  # format=flowed decoded, as a reader shows it


def test_a_list_address_adds_text_but_cannot_resolve(app, sink, incident, inbound) -> None:  # noqa: ANN001
    # ops-team@example.org is on the stakeholders list, not a person of contacts.yaml.
    code, _ = inbound.send(reply("resolved\nAll good from here", sender="ops-team@example.org"),
                           reply_to(sink, "ops-team@example.org"), mail_from="ops-team@example.org")
    assert code == 250
    fresh = Incident.get_by_id(incident.id)
    assert fresh.status == "open" and fresh.resolution == ""
    [entry] = posted(incident)
    assert entry.text.startswith("resolved\nAll good from here")
    assert "Posted as text, changed nothing: resolved" in entry.text
    [receipt] = receipts("ops-team@example.org")
    assert "you may add text but not change the incident" in body_of(receipt)


def test_an_impacted_outsider_writing_resolved_resolves_nothing(app, sink, incident,  # noqa: ANN001
                                                                 inbound) -> None:
    outsider = "student-council@example.org"
    code, _ = inbound.send(reply("Resolved\n\nit works for us too", sender=outsider),
                           reply_to(sink, outsider), mail_from=outsider)
    assert code == 250
    assert Incident.get_by_id(incident.id).status == "open"
    assert OutMessage.select().where(OutMessage.kind == "solved").count() == 0
    [entry] = posted(incident)
    assert entry.author == outsider
    assert entry.text.startswith("Resolved\n\nit works for us too")
    # The next email shows the words as text, not a resolution.
    sink.clear()
    from mailflow import incidents as inc
    inc.send_update(app, Incident.get_by_id(incident.id), T0)
    app.deliver_now(T0)
    update = by_rcpt(sink)["ana@example.org"][0]
    assert "Posted as text, changed nothing: Resolved" in body_of(update)


def test_a_forged_from_with_another_envelope_sender_changes_nothing(app, sink, incident,  # noqa: ANN001
                                                                    inbound) -> None:
    # The From is the lead's; the envelope sender is not.
    msg = reply("severity: P3\nlead: mallory@evil.example\nimpacted: +mallory@evil.example\n\n"
                "All fine, stand down", sender="Ana Lima <ana@example.org>")
    code, _ = inbound.send(msg, reply_to(sink), mail_from="mallory@evil.example")
    assert code == 250
    fresh = Incident.get_by_id(incident.id)
    assert (fresh.severity, fresh.lead) == ("P1", "ana@example.org")
    assert "mallory@evil.example" not in fresh.impacted
    assert not Recipient.select().where(Recipient.email == "mallory@evil.example").exists()
    [receipt] = receipts("ana@example.org")
    assert "envelope sender (MAIL FROM) mallory@evil.example is not the From address" in \
        body_of(receipt)


def test_the_same_reply_with_matching_envelope_applies(app, sink, incident, inbound) -> None:  # noqa: ANN001
    msg = reply("severity: P2\n\nIndex rebuilt", sender="Ana Lima <ana@example.org>")
    code, _ = inbound.send(msg, reply_to(sink), mail_from="ana@example.org")
    assert code == 250
    assert Incident.get_by_id(incident.id).severity == "P2"


def test_commands_false_in_contacts_means_text_only(app, sink, incident, inbound,  # noqa: ANN001
                                                    project: Path) -> None:
    contacts = project / "contacts.yaml"
    contacts.write_text(contacts.read_text().replace(
        "{name: Dan Boss, email: dan@example.org}",
        "{name: Dan Boss, email: dan@example.org, commands: false}"))
    app.reload()
    code, _ = inbound.send(reply("severity: P0\n\nThis is bad", sender="dan@example.org"),
                           reply_to(sink), mail_from="dan@example.org")
    assert code == 250
    assert Incident.get_by_id(incident.id).severity == "P1"
    assert "commands: false" in body_of(receipts("dan@example.org")[0])


def test_a_removed_person_is_taken_off_open_incidents_and_refused(app, sink, incident,  # noqa: ANN001
                                                                  inbound, project) -> None:
    code, _ = inbound.send(reply("scribe: bob@example.org\n\nBob keeps the log",
                                 sender="ana@example.org"), reply_to(sink),
                           mail_from="ana@example.org")
    assert code == 250 and Incident.get_by_id(incident.id).scribe == "bob@example.org"
    # The real CLI, in its own process, as an operator runs it next to the daemon.
    result = subprocess.run(
        [sys.executable, "-m", "mailflow.cli", "--config", str(project / "mailflow.toml"),
         "contacts", "remove", "bob@example.org"], capture_output=True, text=True,
        env={**os.environ, "MAILFLOW_USER": "ana@example.org"}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "taken off INC-1" in result.stdout
    fresh = Incident.get_by_id(incident.id)
    assert fresh.scribe is None
    assert not Recipient.select().where(Recipient.email == "bob@example.org").exists()
    [entry] = posted(incident, "removed")
    assert "bob@example.org" in entry.text and "scribe" in entry.text
    assert entry.author == "ana@example.org"
    app.reload()  # the daemon reloads contacts.yaml when the file changes
    code, answer = inbound.send(reply("resolved\nI fixed it", sender="bob@example.org"),
                                reply_to(sink), mail_from="bob@example.org")
    assert code == 550 and b"may not post" in answer
    assert Incident.get_by_id(incident.id).status == "open"
    assert Entry.select().where(Entry.kind == "refused").count() == 1
