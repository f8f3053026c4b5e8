"""A status report in a reply (Learned / Tried / Now / Left), through the real inbound
server: grouped in the next update read back from the SMTP sink, offered by the lead's
reminder, and the experiments listed with their results in the postmortem draft."""

from __future__ import annotations

from datetime import timedelta

import pytest

from mailflow import composition, postmortem, report, scheduler
from mailflow import incidents as inc
from mailflow.models import Entry, Incident

from .helpers import NOW, by_rcpt, posted, reply, reply_to_address, text_of

BOB = "Bob Stone <bob@example.org>"
REPORT = ("send now\n\n"
          "Learned: the sessions index is corrupt\n"
          "Tried: restart php-fpm -> no change\n"
          "Tried: failover to the replica\n"
          "→ logins work again, read-only\n"
          "Now: rebuilding the index\n"
          "Left:\n"
          "- verify last night's backup\n")


@pytest.fixture
def incident(announced: Incident) -> Incident:
    return announced


def test_the_sections_are_read_with_results() -> None:
    sections = report.read(REPORT.split("\n\n", 1)[1])
    assert sections == {
        "learned": ["the sessions index is corrupt"],
        "tried": [{"what": "restart php-fpm", "result": "no change"},
                  {"what": "failover to the replica", "result": "logins work again, read-only"}],
        "now": ["rebuilding the index"],
        "left": ["verify last night's backup"],
    }
    assert report.read("tried: rolling back 4.2\nthe 502s stopped") == {
        "tried": [{"what": "rolling back 4.2", "result": "the 502s stopped"}]}
    # a paragraph after a blank line ends the report; plain text has none
    assert report.read("Now: rebuilding\n\nThanks, Bob") == {"now": ["rebuilding"]}
    assert report.read("Rebuilding the index now.") is None


def test_a_report_is_posted_as_text_and_grouped_in_the_next_update(  # noqa: ANN001
        app, sink, incident, inbound) -> None:
    code, _ = inbound.send(reply(REPORT, sender=BOB), reply_to_address(app, incident))
    assert code == 250
    [entry] = posted(incident)
    assert entry.text.startswith("Learned: the sessions index is corrupt")
    assert entry.data["report"]["tried"][0] == {"what": "restart php-fpm", "result": "no change"}
    # the headings are text, never held as look-alike commands
    assert not Entry.select().where((Entry.incident == incident) & (Entry.kind == "held")).exists()
    app.deliver_now(NOW)
    [update] = [m for m in by_rcpt(sink)["ops-team@example.org"]
                if m["X-Mailflow-Kind"] == "update"]
    text = text_of(update).replace("\r\n", "\n")
    block = text[text.index("[NEW] Status report:"):text.index("Updates:")]
    assert block.index("What we learned:") < block.index("What we tried:") \
        < block.index("What we are doing now:") < block.index("What is left:")
    assert "    - restart php-fpm → no change\n" in block
    assert "    - failover to the replica → logins work again, read-only\n" in block
    html = update.get_body(("html",)).get_content()
    assert "Status report" in html and "restart php-fpm → no change" in html
    # the next update carries no report: it was news once
    ctx = composition.context(app, Incident.get_by_id(incident.id), "update", NOW + timedelta(minutes=1))
    assert ctx["report"] == []


def test_the_reminder_offers_the_headings(app, sink, incident) -> None:  # noqa: ANN001
    due = Incident.get_by_id(incident.id).next_comm_at
    scheduler.tick(app, due - timedelta(minutes=1))
    app.deliver_now(due - timedelta(minutes=1))
    [reminder] = [m for m in by_rcpt(sink)["ana@example.org"]
                  if m["X-Mailflow-Kind"] == "reminder"]
    body = text_of(reminder)
    assert "Tried: what you tried → what happened" in body
    assert "Learned:" in body and "Left:" in body


def test_the_postmortem_lists_the_experiments_with_their_results(  # noqa: ANN001
        app, sink, incident, inbound) -> None:
    inbound.send(reply(REPORT, sender=BOB), reply_to_address(app, incident))
    later = NOW + timedelta(minutes=30)
    inc.resolve(app, Incident.get_by_id(incident.id), later, "Rebuilt the index",
                "ana@example.org")
    text = postmortem.draft(app, Incident.get_by_id(incident.id), later + timedelta(days=1))
    section = text[text.index("**Experiments**"):]
    assert "| Bob Stone | restart php-fpm | no change |" in section
    assert "| Bob Stone | failover to the replica | logins work again, read-only |" in section
    assert "Bob Stone: the sessions index is corrupt" in section
