"""What an email shows of an incident: its facts, the updates, the phases, the subject and
preview text. Reads the incident and its timeline; changes nothing."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from . import report
from .clock import as_utc, format_duration
from .config import SEVERITIES
from .models import Entry, Incident
from .render import clean_text, reflow_paragraphs
from .tokens import reply_address

if TYPE_CHECKING:
    from .app import Mailflow
    from .contacts import Contacts

IMPACTS = {"outage": "complete downtime", "degraded": "degraded"}
# What each priority means and its target resolution time.
SEVERITY_LABELS = {
    "P0": "P0 (critical; target resolution within 1 h)",
    "P1": "P1 (high; target resolution within 4 h)",
    "P2": "P2 (medium; target resolution within 24 h)",
    "P3": "P3 (low; target resolution within 1 week)",
}


# --- what an email shows ------------------------------------------------------------------

@dataclass(frozen=True)
class Fact:
    """One labelled line of a communication; `new` when it changed since the last one."""

    label: str
    value: str
    new: bool = False


@dataclass(frozen=True)
class Item:
    """One posted update in a communication's log."""

    at: datetime
    author: str
    text: str
    new: bool


def person_label(contacts: Contacts | None, address: str | None, with_address: bool = True
                 ) -> str:
    """Who someone is for people: `Ana Lima <ana@example.org>` (or just `Ana Lima`) when
    contacts.yaml knows them, else the address."""
    if not address:
        return ""
    person = contacts.person(address) if contacts is not None and "@" in address else None
    if person is None or not person.name.strip():
        return address
    return f"{person.name} <{address}>" if with_address else person.name


def facts_of(incident: Incident, contacts: Contacts | None = None) -> dict[str, str]:
    """The fields every communication carries, as label → value (people by name)."""
    facts = {
        "Service": incident.service_title,
        "Scope": IMPACTS[incident.impact].capitalize(),
        "Severity": SEVERITY_LABELS[incident.severity],
        "Who is impacted": ", ".join(incident.impacted) or "not known yet",
        "How long / what makes it uncertain": incident.eta or "not known yet",
        "What has been started": incident.started or "assessment in progress",
        "Next debugging steps": incident.next_steps or "to be decided",
        "Incident lead": person_label(contacts, incident.lead) or "not assigned yet",
    }
    if incident.communicator:
        facts["Communicator"] = person_label(contacts, incident.communicator)
    if incident.scribe:
        facts["Scribe"] = person_label(contacts, incident.scribe)
    return facts


CONTINUED = "… (continued in the incident record)"
# Mail only for the lead or communicator: a subject of its own saying what to do, and not
# in the stakeholders' conversation (no In-Reply-To to their thread).
LEAD_KINDS = ("reminder", "notice", "handover")
# Deadlines before bulk: claimed ahead of a fan-out queued earlier.
PRIORITY = {"reminder": 2, "handover": 2, "notice": 1, "escalation": 1}


def _capped(text: str, limit: int) -> str:
    """One update's text as an email carries it: at most `limit` characters, visibly cut."""
    text = reflow_paragraphs(clean_text(text))  # hard-wrapped replies read as paragraphs
    return text if len(text) <= limit else text[:limit].rstrip() + "\n" + CONTINUED


def context(app: Mailflow, incident: Incident, kind: str, now: datetime,
            in_full: int | None = None, max_chars: int | None = None,
            **extra: Any) -> dict[str, Any]:
    """Everything a template can use; `new` is measured against the last communication.

    `in_full`: the newest updates carried in full (default `[emails] updates_in_full`); the
    earlier ones are counted in one line, so an email's size does not grow with the incident.
    """
    current = facts_of(incident, app.contacts)
    before = incident.last_sent or {}
    first = incident.last_sent is None
    facts = [Fact(k, clean_text(v), new=not first and before.get(k) != v)
             for k, v in current.items()]
    limit = app.config.emails.update_max_chars if max_chars is None else max_chars
    in_full = app.config.emails.updates_in_full if in_full is None else in_full
    kinds = ("update", "change", "handover", "reopened")
    where = (Entry.incident == incident) & Entry.kind.in_(kinds)
    total = Entry.select().where(where).count()
    newest = list(Entry.select().where(where).order_by(Entry.at.desc(), Entry.id.desc())
                  .limit(in_full))
    items = [Item(e.at, person_label(app.contacts, e.author, with_address=False),
                  _capped(e.text, limit), new=e.communicated_at is None)
             for e in reversed(newest)]
    has_news = any(f.new for f in facts) or any(i.new for i in items)
    # The status report of the news: what the new entries learned, tried, do now, have left.
    news_report = report.merge((e.data or {}).get("report") for e in reversed(newest)
                               if e.communicated_at is None)
    ctx: dict[str, Any] = {
        "kind": kind,
        "incident": IncidentView(incident),
        "facts": facts,
        "updates": items,
        "earlier_updates": total - len(items),
        "report": [(report.TITLES[k], [report.experiment_text(x) if k == "tried" else x
                                       for x in v]) for k, v in news_report.items()],
        "report_template": report.TEMPLATE,
        "has_news": has_news,
        "now": now,
        "elapsed": now - incident.declared_at,
        "next_comm": incident.next_comm_at,
        "prev_comm_at": incident.last_comm_at or incident.declared_at,
        "subject": incident.subject,
        "reply_address": reply_address(app.config.reply_local, app.config.reply_domain,
                                       incident.id, app.config.secret),
    }
    ctx.update(extra)
    if kind == "solved":
        # How the incident went, not only how it ended: the worst state and the phases.
        stretches = phases(incident, ctx.get("ended_at") or incident.resolved_at or now)
        severity, impact = worst_of(stretches)
        ctx.setdefault("worst", {"severity": severity, "impact": impact,
                                 "severity_label": SEVERITY_LABELS.get(severity, severity),
                                 "impact_label": IMPACTS.get(impact, impact)})
        day = as_utc(incident.declared_at).date()
        ctx.setdefault("phases", [p.text(day) for p in stretches])
    ctx["preheader"] = preheader(incident, kind, ctx)
    ctx["subject"] = subject_of(app, incident, kind, ctx)
    return ctx


def _first_line(text: str, width: int = 90) -> str:
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line if len(line) <= width else line[: width - 1].rstrip() + "…"


def preheader(incident: Incident, kind: str, ctx: dict[str, Any]) -> str:
    """The preview text an inbox list shows: the kind of email and its news, first."""
    before = incident.last_sent or {}

    def short(label: str, value: str) -> str:  # "P1 — critical…" -> "P1"; "Degraded" -> "degraded"
        return value.split()[0] if label == "Severity" and value else value.lower()

    shifts = [f"{short(f.label, before.get(f.label, ''))} → {short(f.label, f.value)}"
              for f in ctx["facts"] if f.new and f.label in ("Severity", "Scope")]
    news = [i for i in ctx["updates"] if i.new]
    if kind == "start":
        return f"STARTED — {incident.severity} {IMPACTS[incident.impact]} — {incident.summary}"
    if kind == "update":
        n = Entry.select().where((Entry.incident == incident) & (Entry.kind == "email")
                                 & Entry.text.startswith("update email")).count() + 1
        said = ", ".join(shifts)
        if news:
            said = f"{said} — {_first_line(news[-1].text)}" if said else _first_line(news[-1].text)
        return f"UPDATE {n} — {said or 'no new information; investigation continues'}"
    if kind == "solved":
        took = format_duration(max(timedelta(0), (incident.resolved_at or ctx["now"])
                                   - incident.declared_at))
        label = "SOLVED" if incident.status == "resolved" else "SOLVED, follow-up pending"
        return f"{label} after {took} — {_first_line(incident.resolution or incident.summary)}"
    if kind == "escalation":
        return (f"ESCALATION after {format_duration(ctx.get('threshold') or ctx['elapsed'])} — "
                f"a decision is needed: {incident.summary}")
    if kind == "reminder" and incident.next_comm_at:
        return (f"Update due at {incident.next_comm_at:%H:%M} UTC — reply to this email to add "
                "to it, or let it go out as it is")
    if kind == "handover":
        return "Time to hand over the lead — reply with `lead: someone@example.org`"
    return str(ctx.get("title") or incident.subject)


def subject_of(app: Mailflow, incident: Incident, kind: str, ctx: dict[str, Any]) -> str:
    """The Subject: the incident's own for stakeholders; a to-do of its own for the lead."""
    if kind == "reminder" and incident.next_comm_at:
        due = incident.next_comm_at
        return f"[{incident.ref}] Update due at {due:%H:%M} UTC — reply to send it"
    if kind == "handover":
        return f"[{incident.ref}] Hand over the lead — you have led it for " \
               f"{format_duration(ctx.get('led_for') or ctx['elapsed'])}"
    if kind == "notice":
        title = str(ctx.get("title") or "")
        return title if title.startswith(f"[{incident.ref}]") else f"[{incident.ref}] {title}"
    if app.config.emails.subject_style == "status":
        # The state up front, the stable part after: what the team asked for, at the cost of
        # Gmail's conversation (it threads only identical subjects).
        return f"{ctx['preheader'].split(' — ')[0]} · {incident.subject}"
    return incident.subject


class IncidentView:
    """Read-only view of an incident for templates (no database access from a template)."""

    def __init__(self, incident: Incident) -> None:
        self.ref = incident.ref
        self.service = incident.service
        self.service_title = incident.service_title
        self.severity = incident.severity
        self.impact = incident.impact
        self.impact_label = IMPACTS[incident.impact]
        self.summary = incident.summary
        self.impacted = list(incident.impacted)
        self.eta = incident.eta
        self.started = incident.started
        self.next_steps = incident.next_steps
        self.lead = incident.lead or ""
        self.communicator = incident.communicator or ""
        self.scribe = incident.scribe or ""
        self.status = incident.status
        self.declared_at = incident.declared_at
        self.resolved_at = incident.resolved_at


# --- the timeline read back ---

def field_changes(entries: Iterable[Entry], name: str) -> list[tuple[Entry, dict[str, Any]]]:
    """Every change of field `name` in these entries, old one-change entries included."""
    found = []
    for entry in entries:
        data = entry.data or {}
        changes = data.get("changes")
        if changes is None and "field" in data:  # an entry written before one-entry actions
            changes = [data]
        for change in changes or []:
            if change.get("field") == name:
                found.append((entry, change))
    return found


@dataclass(frozen=True)
class Phase:
    """A stretch of the incident at one severity and impact."""

    severity: str
    impact: str
    start: datetime
    end: datetime

    def text(self, day: date | None = None) -> str:
        """`P1 outage 10:05–11:30` (with the date of a time not on `day`)."""
        def hm(at: datetime) -> str:
            at = as_utc(at)
            return f"{at:%H:%M}" if day is None or at.date() == day else f"{at:%Y-%m-%d %H:%M}"
        return f"{self.severity} {self.impact} {hm(self.start)}–{hm(self.end)}"


def phases(incident: Incident, until: datetime | None = None) -> list[Phase]:
    """The incident's severity and impact over time, from its timeline: one phase per
    stretch, from the declaration to `until` (its resolution, else the last change)."""
    entries = list(Entry.select().where((Entry.incident == incident)
                                        & Entry.kind.in_(("update", "change", "handover")))
                   .order_by(Entry.at, Entry.id))
    events = sorted([(e.at, e.id, name, c) for name in ("severity", "impact")
                     for e, c in field_changes(entries, name)], key=lambda t: (t[0], t[1]))
    first_sev = next((c.get("old") for *_, n, c in events if n == "severity"), None)
    first_imp = next((c.get("old") for *_, n, c in events if n == "impact"), None)
    state = {"severity": first_sev or incident.severity, "impact": first_imp or incident.impact}
    start = incident.declared_at
    end = until or incident.resolved_at or (events[-1][0] if events else start)
    out: list[Phase] = []
    for at, _id, name, change in events:
        if change.get("new") == state[name]:
            continue
        if at > start:
            out.append(Phase(state["severity"], state["impact"], start, at))
            start = at
        state[name] = change.get("new") or state[name]
    out.append(Phase(state["severity"], state["impact"], start, max(start, end)))
    merged: list[Phase] = []
    for phase in out:  # P1 → P2 → P1 within a minute leaves two P1 stretches: joined
        last = merged[-1] if merged else None
        if last and (last.severity, last.impact) == (phase.severity, phase.impact):
            merged[-1] = Phase(last.severity, last.impact, last.start, phase.end)
        else:
            merged.append(phase)
    return merged


def worst_of(stretches: Sequence[Phase]) -> tuple[str, str]:
    """The worst severity (P0 first) and impact (an outage over degraded) of the phases."""
    severity = min((p.severity for p in stretches), key=lambda s: SEVERITIES.index(s)
                   if s in SEVERITIES else len(SEVERITIES))
    impact = "outage" if any(p.impact == "outage" for p in stretches) else "degraded"
    return severity, impact
