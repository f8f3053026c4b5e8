"""Emails people can scan: subjects and preheaders per kind, threads, bounded size, and the
lead's reminder ahead of a long fan-out. Every test reads the real messages from the sink."""

from __future__ import annotations

import asyncio
import base64
import re
from dataclasses import dataclass
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from mailflow import incidents as inc
from mailflow.app import Mailflow
from mailflow.config import load_config
from mailflow.models import OutMessage, Recipient
from mailflow.scheduler import run_due, tick
from mailflow.testing import Sink, SinkHandler

from .conftest import T0, write_config
from .helpers import ORANGE, declare, highlighted, html_of, text_of

PREHEADER = re.compile(r'<div class="preheader"[^>]*>(.*?)</div>', re.S)


def preheader(msg: EmailMessage) -> str:
    found = PREHEADER.search(html_of(msg))
    assert found, "every email has a preheader"
    return found.group(1).strip()


def of_kind(sink: Sink, kind: str) -> list[EmailMessage]:
    return [m for m in sink.messages() if m["X-Mailflow-Kind"] == kind]


def test_subjects_and_preheaders_say_what_each_email_is(app: Mailflow, sink: Sink) -> None:
    incident = declare(app)
    tick(app, T0)
    [start] = [m for m in of_kind(sink, "start") if m["To"].endswith("ops-team@example.org")]
    assert start["Subject"] == "[INC-1] ISC Learn Platform: outage"
    assert preheader(start).startswith("STARTED — P1 complete downtime — Learn platform")

    tick(app, T0 + timedelta(minutes=50))  # the lead's reminder of the 11:00 update
    [reminder] = of_kind(sink, "reminder")
    assert reminder["Subject"] == "[INC-1] Update due at 11:00 UTC — reply to send it"
    assert reminder["In-Reply-To"] is None and reminder["References"] is None, \
        "mail for the lead is not in the stakeholders' thread"

    inc.change(app, incident, T0 + timedelta(minutes=55), "ana@example.org", severity="P2")
    inc.post_update(app, incident, "Logins work again, read-only\nwhile the index rebuilds.",
                    "ana@example.org", T0 + timedelta(minutes=55))
    tick(app, T0 + timedelta(hours=1))
    [update] = [m for m in of_kind(sink, "update") if m["To"].endswith("ops-team@example.org")]
    assert update["Subject"] == start["Subject"], "one conversation: the subject is stable"
    assert update["In-Reply-To"] == start["Message-ID"]
    # Outlook: one Thread-Topic, and a Thread-Index whose 22-byte head is the conversation's
    # and whose child block says how long after the start (1 h, in FILETIME's 100 ns).
    assert start["Thread-Topic"] == update["Thread-Topic"] == start["Subject"]
    head, later = (base64.b64decode(m["Thread-Index"]) for m in (start, update))
    assert len(head) == 22 and head[0] == 1 and len(later) == 27 and later[:22] == head
    elapsed = (int.from_bytes(later[22:], "big") >> 8) << 18
    assert abs(elapsed - 36_000_000_000) < 2 ** 18 + 2 ** 16 * 2
    assert reminder["Thread-Index"] is None, "the lead's to-do is not in the conversation"
    assert preheader(update) == "UPDATE 1 — P1 → P2 — Logins work again, read-only"

    inc.resolve(app, incident, T0 + timedelta(hours=2, minutes=10),
                "Rebuilt the index from the replica.", "ana@example.org")
    tick(app, T0 + timedelta(hours=2, minutes=10))
    [solved] = [m for m in of_kind(sink, "solved") if m["To"].endswith("ops-team@example.org")]
    assert preheader(solved).startswith("SOLVED after 2 h 10 min — Rebuilt the index")
    text = text_of(solved)
    assert "-- " in text.splitlines(), "the signature separator is dash dash space"


def test_status_subjects_on_request(tmp_path: Path, sink: Sink) -> None:
    write_config(tmp_path, sink.port, '\n[emails]\nsubject_style = "status"\n')
    app = Mailflow(load_config(tmp_path / "mailflow.toml"))
    try:
        declare(app)
        tick(app, T0)
        subjects = {m["Subject"] for m in of_kind(sink, "start")}
        assert subjects == {"STARTED · [INC-1] ISC Learn Platform: outage"}
    finally:
        app.close()


def test_twenty_large_replies_keep_every_email_under_the_cap(tmp_path: Path, sink: Sink) -> None:
    write_config(tmp_path, sink.port)
    cfg = tmp_path / "mailflow.toml"
    cfg.write_text(cfg.read_text().replace("[outbound]\n", "[outbound]\nmax_message_size = 300000\n"))
    app = Mailflow(load_config(cfg))
    try:
        incident = declare(app)
        big = ("Stack trace line that goes on and on " * 15 + "\n") * 1000  # ~550 KB
        for n in range(20):
            at = T0 + timedelta(minutes=2 * n + 1)
            inc.post_update(app, incident, f"Reply {n}\n{big}", "ana@example.org", at)
            inc.send_update(app, incident, at)
            tick(app, at)
        sizes = [len(r.data) for r in sink.received]
        assert max(sizes) <= 300_000, max(sizes)
        updates = of_kind(sink, "update")
        assert len(updates) == 20 * Recipient.select().count()
        last = text_of(updates[-1])
        assert "… (continued in the incident record)" in last
        assert "earlier updates not repeated here" in last
        assert "Reply 19" in last
        full = inc.describe(incident)["timeline"]
        assert any(len(e["text"]) > 500_000 for e in full), "the record keeps the full text"
    finally:
        app.close()


def test_emails_fit_the_size_the_relay_advertises(tmp_path: Path) -> None:
    with Sink(data_size_limit=120_000) as sink:  # advertised in EHLO as SIZE 120000
        write_config(tmp_path, sink.port, "\n[emails]\nupdate_max_chars = 100000\n")
        app = Mailflow(load_config(tmp_path / "mailflow.toml"))
        try:
            incident = declare(app, impacted=[])
            tick(app, T0)  # the start email: the relay's SIZE is learnt
            for n in range(3):
                inc.post_update(app, incident, f"Dump {n}\n" + "y " * 30_000, "ana@example.org",
                                T0 + timedelta(minutes=n + 1))
                inc.send_update(app, incident, T0 + timedelta(minutes=n + 1))
                tick(app, T0 + timedelta(minutes=n + 1))
            assert OutMessage.select().where(OutMessage.status != "sent").count() == 0
            updates = of_kind(sink, "update")
            assert len(updates) == 6 and all(len(m.as_bytes()) <= 120_000 for m in updates)
            assert "Dump 2" in text_of(updates[-1])
            assert "earlier updates not repeated here" in text_of(updates[-1])
        finally:
            app.close()


@dataclass
class SlowHandler(SinkHandler):
    """A relay that takes its time over each DATA."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(0.002)
        return await super().handle_DATA(server, session, envelope)


def test_the_leads_reminder_goes_ahead_of_a_slow_fan_out(tmp_path: Path) -> None:
    with Sink(handler=SlowHandler()) as sink:
        write_config(tmp_path, sink.port)
        app = Mailflow(load_config(tmp_path / "mailflow.toml"))
        try:
            declare(app, impacted=[])  # INC-1: the 11:00 update, reminder due at 10:50
            tick(app, T0)
            sink.clear()
            crowd = [f"user{i}@example.org" for i in range(600)]
            declare_at = T0 + timedelta(minutes=49)
            inc.declare(app, declare_at, service="learn", severity="P1", impact="outage",
                        summary="Second outage", impacted=crowd, lead="ana@example.org",
                        author="ana@example.org")
            now = [declare_at]

            async def scenario() -> None:
                drain = asyncio.ensure_future(app.deliver(now[0], clock=lambda: now[0]))
                while len(sink.received) < 50:
                    await asyncio.sleep(0.01)
                now[0] = T0 + timedelta(minutes=50)
                report = run_due(app, now[0])  # the daemon's tick, during the drain
                assert any("reminder" in line for line in report.done)
                await drain

            asyncio.run(scenario())
            kinds = [r.message["X-Mailflow-Kind"] for r in sink.received]
            assert len(kinds) >= 601
            position = kinds.index("reminder")
            assert position < 50 + 60, \
                f"the reminder went out at position {position} of {len(kinds)}, not after the fan-out"
        finally:
            app.close()


def test_solved_and_postmortem_show_the_worst_state_and_the_phases(app: Mailflow,
                                                                   sink: Sink) -> None:
    from mailflow.postmortem import draft

    incident = declare(app, impacted=[], severity="P2", impact="degraded")
    inc.apply_update(app, incident, T0 + timedelta(minutes=5), "ana@example.org",
                     fields={"severity": "P1", "impact": "outage"}, text="Now fully down.")
    inc.apply_update(app, incident, T0 + timedelta(hours=1, minutes=30), "ana@example.org",
                     fields={"severity": "P2", "impact": "degraded"})
    inc.post_update(app, incident, "Read-only works.", "ana@example.org",
                    T0 + timedelta(hours=1, minutes=40))
    inc.resolve(app, incident, T0 + timedelta(hours=2, minutes=15), "Rebuilt the index.",
                "ana@example.org")
    tick(app, T0 + timedelta(hours=2, minutes=15))
    [solved] = [m for m in of_kind(sink, "solved") if m["To"].endswith("ops-team@example.org")]
    text = text_of(solved)
    assert "At worst: P1 (high; target resolution within 4 h), complete downtime" in text
    assert ("Phases (UTC):\n    P2 degraded 10:00–10:05\n    P1 outage 10:05–11:30\n"
            "    P2 degraded 11:30–12:15\n") in text.replace("\r\n", "\n")
    html = html_of(solved)
    assert "P1 outage 10:05–11:30<br>P2 degraded 11:30–12:15" in html
    assert "At worst" in html
    md = draft(app, inc.get_incident(incident.ref), T0 + timedelta(hours=3))
    assert ("phases (UTC): P2 degraded 10:00–10:05, P1 outage 10:05–11:30, "
            "P2 degraded 11:30–12:15") in md
    assert "- Severity: P2 (medium; target resolution within 24 h) (at worst P1)" in md


WRAPPED = ("We found the cause: the nightly index rebuild ran out of disk space at\n"
           "03:00 and left the search index half written, so every request that\n"
           "touches search returned 502.\n\n"
           "Next steps:\n- free disk space on db-2\n- rebuild the index")


def test_one_action_is_one_entry_text_first_and_new_recipients_are_not_news(
        app: Mailflow, sink: Sink) -> None:
    incident = declare(app, impacted=[])
    tick(app, T0)
    sink.clear()
    at = T0 + timedelta(minutes=20)
    inc.apply_update(app, incident, at, "ana@example.org", text=WRAPPED,
                     fields={"severity": "P2", "impact": "degraded", "eta": "1 h",
                             "next_steps": "Rebuild the index"},
                     impacted=["carol@example.org"])
    inc.send_update(app, incident, at)
    tick(app, at)
    [update] = [m for m in of_kind(sink, "update") if m["To"].endswith("ops-team@example.org")]
    html = html_of(update)
    items = [h for h in highlighted(html, ORANGE) if "UTC" in h and "Ana Lima" in h]
    assert len(items) == 1, "one action, one orange entry"
    [item] = items
    assert item.index("We found the cause") < item.index("Severity: P1 → P2")
    assert ("Severity: P1 → P2 · Scope: complete downtime → degraded · How long: unknown: "
            "depends on the database restore → 1 h · Next debugging steps: Check replication "
            "lag → Rebuild the index") in item, "the changes in one line"
    assert "carol@example.org" not in item and "Added carol" not in html, \
        "a new recipient is recorded, not broadcast"
    assert "carol@example.org" in {r.rcpt_tos[0] for r in sink.received}
    shown = inc.describe(incident)["timeline"]
    assert [e["text"] for e in shown if e["kind"] == "recipient"] == [
        "Added carol@example.org to the emails (impacted)"]
    # The client's hard wrap is gone: one paragraph that wraps at the reader's width, and
    # the list keeps its lines.
    paragraph = ("We found the cause: the nightly index rebuild ran out of disk space at "
                 "03:00 and left the search index half written, so every request that "
                 "touches search returned 502.")
    assert paragraph in html
    assert paragraph in text_of(update).replace("\r\n", "\n")
    assert "Next steps:\r\n- free disk space on db-2\r\n- rebuild the index" in html
    assert WRAPPED in shown[-1]["text"] or any(WRAPPED in e["text"] for e in shown), \
        "the record keeps the text as written"


def test_text_part_is_flowed_with_short_lines_and_a_signature_separator(app: Mailflow,
                                                                         sink: Sink) -> None:
    incident = declare(app)
    inc.post_update(app, incident, "word " * 60 + "\n" + "x" * 120, "ana@example.org",
                    T0 + timedelta(minutes=5))
    inc.send_update(app, incident, T0 + timedelta(minutes=5))
    inc.resolve(app, incident, T0 + timedelta(minutes=30), "Fixed it. " * 20, "ana@example.org")
    tick(app, T0 + timedelta(minutes=30))
    seen_long = False
    for kind in ("start", "update", "solved", "reminder", "notice"):
        for msg in of_kind(sink, kind):
            part = msg.get_body(("plain",))
            assert part is not None and part.get_param("format") == "flowed"
            raw = part.get_content().replace("\r\n", "\n").split("\n")
            assert "-- " in raw, f"{kind}: the signature separator is dash dash space"
            long = [ln.strip() for ln in raw if len(ln) > 78]
            assert set(long) <= {"x" * 120}, f"{kind}: only an unbreakable word exceeds 78"
            seen_long = seen_long or bool(long)
            soft = [ln for ln in raw if ln.endswith(" ") and ln != "-- "]
            assert all(len(ln) <= 78 for ln in soft)
    assert seen_long, "the update carried the long word"
    [solved] = [m for m in of_kind(sink, "solved") if m["To"].endswith("ops-team@example.org")]
    assert ("Fixed it. " * 20).strip() in text_of(solved), "a flowed reader joins it again"
