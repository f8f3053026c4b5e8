"""The Markdown postmortem draft of a resolved incident, following the usual postmortem template.

mailflow fills what its timeline knows (times, people, updates, severity changes, earlier
incidents of the service) and leaves `_TODO: ..._` prompts for what only people know.
Reply text ends up in the draft, so every free text is made inert for Markdown here, before
the template sees it: an operator's override of `postmortem.md` cannot forget to do it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import jinja2

from .composition import IMPACTS, SEVERITY_LABELS, field_changes, person_label, phases, worst_of
from .errors import InvalidInput, TemplateError
from .models import Entry, Incident, OutMessage
from .render import one_line

if TYPE_CHECKING:
    from .app import Mailflow
    from .contacts import Contacts

TEMPLATE = "postmortem.md"
WHYS = ("1st", "2nd", "3rd", "4th", "5th")  # five whys reach a root cause
# Free text sits in "- " list items; continuation lines indented to the item's content
# column stay inside the item, so they cannot start a block (heading, fence) of the document.
ITEM_INDENT = "  "
# Line starts that would still open a block inside the item: an ATX heading, a setext
# underline (turns the line above into a heading), a code fence.
_BLOCK_START = re.compile(r"^(\s*)(?=#|=+\s*$|-+\s*$|`{3}|~{3})")


def md_line(text: str) -> str:
    """One line of Markdown-inert text: whitespace collapsed, `<` escaped (no raw HTML)."""
    return one_line(text).replace("<", "&lt;")


def md_text(text: str, indent: str = ITEM_INDENT) -> str:
    """Multi-line free text for a list item: `<` escaped, block starts escaped, lines indented."""
    out = []
    for i, line in enumerate(str(text).strip().splitlines()):
        line = _BLOCK_START.sub(r"\1\\", line.rstrip().replace("<", "&lt;"), count=1)
        # Blank lines stay empty: the indented line after them still continues the item.
        out.append(line if i == 0 or not line else indent + line)
    return "\n".join(out)


@dataclass(frozen=True)
class Line:
    """One dated line of the draft (timeline entry, update, escalation); text is inert."""

    at: datetime
    kind: str
    author: str
    text: str


@dataclass(frozen=True)
class SeverityChange:
    """A severity change from the timeline."""

    at: datetime
    old: str
    new: str
    author: str


@dataclass(frozen=True)
class Lead:
    """Who led the incident from when."""

    since: datetime
    who: str


@dataclass(frozen=True)
class Earlier:
    """An earlier incident of the same service, for the Recurrence section."""

    ref: str
    day: str
    severity: str
    summary: str
    resolution: str


@dataclass(frozen=True)
class View:
    """The incident as the postmortem template sees it; every string is Markdown-inert."""

    ref: str
    service_title: str
    summary: str
    severity: str
    severity_label: str
    declared_severity: str
    declared_severity_label: str
    impact_label: str
    impacted: list[str]
    declared_at: datetime
    declared_by: str
    resolved_at: datetime
    resolved_by: str
    closed_at: datetime | None
    closing_note: str
    duration: timedelta
    grade: str
    resolution: str
    follow_up: str
    communicator: str
    scribe: str


def _author(value: str, contacts: Contacts | None = None) -> str:
    """A person by their name from contacts.yaml (else the address), Markdown-inert."""
    return md_line(person_label(contacts, value, with_address=False)) or "unknown"


def _line(entry: Entry, contacts: Contacts | None = None) -> Line:
    return Line(entry.at, entry.kind, _author(entry.author, contacts), md_text(entry.text))


@dataclass(frozen=True)
class Experiment:
    """Something tried during the incident and what it gave (from `Tried:` in replies)."""

    at: datetime
    author: str
    what: str
    result: str


@dataclass(frozen=True)
class Learned:
    """Something the team learned on the way (from `Learned:` in replies)."""

    at: datetime
    author: str
    text: str


def _cell(text: str) -> str:
    """Text for one cell of a Markdown table: one line, no column separator."""
    return md_line(text).replace("|", "\\|")


def context(incident: Incident, now: datetime, contacts: Contacts | None = None
            ) -> dict[str, Any]:
    """Everything `postmortem.md` can use, read from the incident and its timeline."""

    def author(value: str | None) -> str:
        return _author(value or "", contacts)

    def line(entry: Entry) -> Line:
        return _line(entry, contacts)

    entries = list(Entry.select().where(Entry.incident == incident).order_by(Entry.at, Entry.id))

    def first(kind: str) -> Entry | None:
        return next((e for e in entries if e.kind == kind), None)

    # One entry may carry several changes (one reply or CLI call = one entry).
    severity_changes = [SeverityChange(e.at, md_line(c.get("old") or ""),
                                       md_line(c.get("new") or ""), author(e.author))
                        for e, c in field_changes(entries, "severity")]
    declared_severity = severity_changes[0].old if severity_changes else incident.severity

    handovers = field_changes(entries, "lead")
    # The lead named at declaration is only in the first handover's "old" once it changed.
    initial_lead = (handovers[0][1].get("old") if handovers else incident.lead) or ""
    leads = [Lead(incident.declared_at, author(initial_lead))] if initial_lead else []
    leads += [Lead(e.at, author(c.get("new"))) for e, c in handovers]
    reopenings = [line(e) for e in entries if e.kind == "reopened"]

    declared, closed = first("declared"), first("closed")
    # Reopened and resolved again: the last resolution is the end.
    resolved = next((e for e in reversed(entries) if e.kind == "resolved"), None)
    first_email = first("email")
    first_sent = (OutMessage.select(OutMessage.sent_at)
                  .where((OutMessage.incident == incident) & OutMessage.sent_at.is_null(False))
                  .order_by(OutMessage.sent_at).first())
    follow_up = incident.follow_up.strip()
    view = View(
        ref=incident.ref,
        service_title=md_line(incident.service_title),
        summary=md_line(incident.summary),
        severity=incident.severity,
        severity_label=SEVERITY_LABELS.get(incident.severity, incident.severity),
        declared_severity=declared_severity,
        declared_severity_label=SEVERITY_LABELS.get(declared_severity, declared_severity),
        impact_label=IMPACTS.get(incident.impact, incident.impact),
        impacted=[md_line(a) for a in incident.impacted],
        declared_at=incident.declared_at,
        declared_by=author(declared.author) if declared else "unknown",
        resolved_at=incident.resolved_at,
        resolved_by=author(resolved.author) if resolved else "unknown",
        closed_at=incident.closed_at if follow_up else None,
        closing_note=md_text(closed.text) if closed else "",
        duration=incident.resolved_at - incident.declared_at,
        # Still "with follow-up" once closed: the postmortem tells how the incident went.
        grade="resolved with follow-up" if follow_up else "resolved",
        resolution=md_text(incident.resolution),
        follow_up=md_text(follow_up),
        communicator=author(incident.communicator) if incident.communicator else "",
        scribe=author(incident.scribe) if incident.scribe else "",
    )
    earlier = [
        Earlier(ref=e.ref, day=f"{e.declared_at:%Y-%m-%d}", severity=e.severity,
                summary=md_line(e.summary),
                resolution=("still open" if e.is_open
                            else md_line(e.resolution) or "no resolution recorded"))
        for e in Incident.select().where((Incident.service == incident.service)
                                         & (Incident.id < incident.id)).order_by(Incident.id)
    ]
    # Phases and the worst state, as the solved email tells them (Markdown-inert already:
    # severities, impacts and times only).
    stretches = phases(incident, incident.resolved_at)
    worst_severity, worst_impact = worst_of(stretches)
    experiments = [Experiment(e.at, author(e.author), _cell(x.get("what", "")),
                              _cell(x.get("result", "")))
                   for e in entries for x in ((e.data or {}).get("report") or {}).get("tried", [])]
    learned = [Learned(e.at, author(e.author), md_line(x))
               for e in entries for x in ((e.data or {}).get("report") or {}).get("learned", [])]
    return {
        "incident": view,
        "worst": {"severity": worst_severity, "impact": worst_impact,
                  "impact_label": IMPACTS.get(worst_impact, worst_impact)},
        "phases": [p.text(incident.declared_at.date()) for p in stretches],
        "now": now,
        "experiments": experiments,
        "learned": learned,
        "timeline": [line(e) for e in entries],
        "updates": [line(e) for e in entries if e.kind == "update"],
        "escalations": [line(e) for e in entries if e.kind == "escalation"],
        "reopenings": reopenings,
        "severity_changes": severity_changes,
        "leads": leads,
        "first_email_at": first_email.at if first_email else None,
        "first_sent_at": first_sent.sent_at if first_sent else None,
        "earlier": earlier,
        "whys": WHYS,
    }


def draft(app: Mailflow, incident: Incident, now: datetime) -> str:
    """The Markdown postmortem draft of a resolved incident."""
    if incident.is_open or incident.resolved_at is None:
        raise InvalidInput(f"{incident.ref} is still open: resolve it first "
                           f"(`mailflow resolve {incident.ref} --steps ...`)")
    ctx = context(incident, now, app.contacts)
    try:
        template = app.renderer.env.get_template(TEMPLATE)
        return template.render(ctx)
    except jinja2.TemplateNotFound:
        raise TemplateError(f"template {TEMPLATE!r} not found in the templates folder") from None
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"{exc.filename or TEMPLATE}:{exc.lineno}: {exc.message}") from None
    except jinja2.TemplateError as exc:
        # An operator's override that names a missing field fails with its file name.
        raise TemplateError(f"{TEMPLATE}: {exc}") from None
