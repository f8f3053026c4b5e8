"""Alerts open draft incidents; the on-call person declares or dismisses them by reply.

An alert group (Alertmanager, Grafana, or `mailflow alert` from any script) becomes a
**draft** for the service its labels name. The same group firing again updates its draft,
never a second one. The on-call person is emailed at once; if nobody acts, they are
reminded after `[alerts] remind_after`, and then the next person on the list is asked,
one more every `remind_after`. A draft has no marks, reminders or escalations of its own:
those start when it is declared. mailflow never resolves an incident because an alert did.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from . import commands
from . import incidents as inc
from .composition import IMPACTS
from .errors import InvalidInput, MailflowError
from .models import Alert, Due, Incident, InMessage, Status
from .render import one_line

if TYPE_CHECKING:
    from .app import Mailflow
    from .posting import Outcome
    from .replies import Reply

# Monitoring severities → ours; a label already saying P0–P3 is taken as is.
SEVERITY_MAP = {"critical": "P1", "page": "P1", "high": "P1", "error": "P2", "major": "P2",
                "warning": "P2", "minor": "P3", "info": "P3", "low": "P3", "none": "P3"}
DEFAULT_SEVERITY = "P2"
DUE_KIND = "alert-page"
ACTIVE = (Status.DRAFT, Status.OPEN)  # an alert group's draft or incident that repeats update


class AlertError(InvalidInput):
    """An alert payload that cannot become a draft (unknown service, malformed JSON)."""


@dataclass(frozen=True)
class AlertGroup:
    """One alert group, whatever sent it: the unit that is deduplicated."""

    source: str
    key: str
    firing: bool
    summary: str
    labels: Mapping[str, str] = field(default_factory=dict)
    details: tuple[str, ...] = ()  # one line per alert of the group
    severity: str = ""
    impact: str = ""
    service: str = ""


@dataclass(frozen=True)
class Intake:
    """What one alert did: the draft or incident it touched, and how."""

    incident: Incident | None
    action: str  # drafted | updated | resolved | ignored

    @property
    def line(self) -> str:
        """One line for logs and the CLI."""
        ref = self.incident.ref if self.incident is not None else "no incident"
        return f"{self.action} {ref}"


# --- payloads -----------------------------------------------------------------------------

def _labels(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items()}


def parse_webhook(payload: Any, source: str) -> AlertGroup:
    """An Alertmanager (version 4) or Grafana alerting webhook → one AlertGroup.

    Grafana's unified alerting sends Alertmanager's shape plus `title`/`message`/`state`,
    so one parser reads both.
    """
    if not isinstance(payload, dict):
        raise AlertError(f"{source} webhook: the body is not a JSON object")
    alerts = payload.get("alerts")
    if not isinstance(alerts, list) or not alerts or not all(isinstance(a, dict) for a in alerts):
        raise AlertError(f"{source} webhook: `alerts` must be a non-empty list of objects")
    common = _labels(payload.get("commonLabels"))
    group = _labels(payload.get("groupLabels"))
    first = _labels(alerts[0].get("labels"))
    labels = {**first, **common, **group}
    annotations = _labels(payload.get("commonAnnotations")) or _labels(alerts[0].get("annotations"))
    key = str(payload.get("groupKey") or "")
    if not key:
        fingerprints = sorted(str(a.get("fingerprint") or "") for a in alerts)
        if not all(fingerprints):
            raise AlertError(f"{source} webhook: no `groupKey` and no `fingerprint` to tell "
                             "this alert from another")
        key = "fp:" + ",".join(fingerprints)
    status = str(payload.get("status") or "firing").lower()
    if status not in ("firing", "resolved"):
        raise AlertError(f"{source} webhook: status {status!r} is neither firing nor resolved")
    name = labels.get("alertname", "alert")
    summary = (annotations.get("summary") or str(payload.get("title") or "").strip()
               or annotations.get("description") or name)
    details = []
    for a in alerts[:50]:  # a storm of 1,000 alerts in one group is still one short email
        al, an = _labels(a.get("labels")), _labels(a.get("annotations"))
        what = an.get("summary") or an.get("description") or al.get("alertname", name)
        where = al.get("instance") or al.get("pod") or al.get("job") or ""
        details.append(one_line(f"[{a.get('status', status)}] {what}"
                                f"{f' on {where}' if where else ''}"
                                f" since {a.get('startsAt', '?')}")[:300])
    return AlertGroup(source=source, key=key[:500], firing=status == "firing",
                      summary=one_line(summary)[:300], labels=labels, details=tuple(details),
                      severity=labels.get("severity", ""), impact=labels.get("impact", ""),
                      service=labels.get("service", ""))


def severity_of(value: str) -> str:
    """`critical` → P1, `warning` → P2, `P0` → P0; unknown or missing → P2."""
    value = value.strip()
    if value.upper() in ("P0", "P1", "P2", "P3"):
        return value.upper()
    return SEVERITY_MAP.get(value.lower(), DEFAULT_SEVERITY)


def impact_of(value: str) -> str:
    """An alert says little about scope: degraded unless its `impact` label says outage."""
    try:
        return inc.check_impact(value) if value else "degraded"
    except InvalidInput:
        return "degraded"


# --- intake -------------------------------------------------------------------------------

def oncall_of(app: Mailflow, service: str) -> list[str]:
    """Who is asked, in order: the service's `oncall:`, else the known people it notifies."""
    svc = app.contacts.service(service)
    if svc.oncall:
        return list(svc.oncall)
    return [a for a in app.contacts.expand(svc.notify) if app.contacts.person(a) is not None]


def receive(app: Mailflow, group: AlertGroup, now: datetime) -> Intake:
    """Record an alert group: a new draft, an updated one, or a resolution noted."""
    service = group.service or app.config.alerts.default_service
    if not service:
        raise AlertError(f"{group.source} alert {group.summary!r}: no `service` label and no "
                         "[alerts] default_service in mailflow.toml; add one of them")
    try:
        svc = app.contacts.service(service)
    except MailflowError as exc:
        raise AlertError(f"{group.source} alert {group.summary!r}: {exc}") from None
    with app.db.atomic("IMMEDIATE"):
        alert = (Alert.select().join(Incident)
                 .where((Alert.key == group.key) & Incident.status.in_(ACTIVE))
                 .order_by(Alert.id.desc()).first())
        if alert is None:
            if not group.firing:
                return Intake(None, "ignored")  # resolved before anyone saw it fire here
            incident = _draft(app, svc.key, svc.title, group, now)
            Alert.create(key=group.key, source=group.source, incident=incident,
                         summary=group.summary, labels=dict(group.labels), first_at=now,
                         last_at=now)
            return Intake(incident, "drafted")
        incident = Incident.get_by_id(alert.incident_id)
        was = alert.status
        alert.status = "firing" if group.firing else "resolved"
        alert.summary, alert.labels, alert.last_at = group.summary, dict(group.labels), now
        alert.count += 1
        alert.save()
        if group.firing:
            if incident.status == "draft" and incident.summary != group.summary:
                incident.summary = group.summary
                incident.save()
            inc.log(incident, now, "alert", f"alert fired again ({group.source}): "
                    f"{group.summary}", author=group.source)
            return Intake(incident, "updated")
        inc.log(incident, now, "alert", f"alert resolved ({group.source}): {group.summary}",
                author=group.source)
        if was != "resolved" and incident.status == "open" and incident.lead:
            lead = inc.add_recipient(app, incident, incident.lead, "as the incident lead", now)
            inc.communicate(app, incident, "notice", now, to=[lead], marks_sent=False,
                            title=f"Alert resolved on {incident.ref}",
                            paragraphs=[
                                f"The alert that opened {incident.ref} has resolved: "
                                f"{group.summary}.",
                                "mailflow does not resolve an incident by itself. When you have "
                                "checked, reply `resolved` followed by the steps that fixed it.",
                            ])
        return Intake(incident, "resolved")


def _draft(app: Mailflow, service: str, title: str, group: AlertGroup,
           now: datetime) -> Incident:
    severity, impact = severity_of(group.severity), impact_of(group.impact)
    people = oncall_of(app, service)
    incident = Incident.create(
        service=service, service_title=title, severity=severity, impact=impact,
        summary=group.summary, impacted=[], declared_at=now, subject="(pending)",
        status=Status.DRAFT, lead=people[0] if people else None)
    incident.subject = one_line(f"[{incident.ref}] {title}: {impact}")
    incident.save()
    inc.log(incident, now, "alert", f"draft from a {group.source} alert: {group.summary}",
            author=group.source, data={"key": group.key, "details": list(group.details)})
    if people:
        _ask(app, incident, people[0], now, group.details, first=True)
    else:
        inc.log(incident, now, "alert", f"nobody to ask: {title} has no oncall and no known "
                "people in its notify lists", author="mailflow")
    inc.plan(incident, DUE_KIND, "1", now + app.config.alerts.remind_after)
    return incident


def _ask(app: Mailflow, incident: Incident, person: str, now: datetime,
         details: tuple[str, ...] | list[str] = (), first: bool = False,
         reminder: bool = False) -> None:
    """Email one on-call person: what fired, and how to declare or dismiss it."""
    who = inc.add_recipient(app, incident, person, "as the on-call person for "
                            f"{incident.service_title}", now)
    title = (f"Reminder: alert on {incident.service_title} waits for you" if reminder
             else f"Alert on {incident.service_title}: declare or dismiss")
    paragraphs = [
        f"An alert fired for {incident.service_title} and opened the draft {incident.ref}: "
        f"{incident.summary}.",
        *(f"{line}" for line in details),
        "Reply `declare` to send the start notification to everyone the service notifies "
        "(optional lines below it: `severity: P1`, `impact: outage`, `summary: …`), or "
        "reply `dismiss` if it needs no communication.",
        f"Today it would go out as {incident.severity}, "
        f"{IMPACTS[incident.impact]}.",
    ]
    if reminder:
        paragraphs.insert(0, f"Nobody has declared or dismissed {incident.ref} yet; the first "
                             "notification should leave within 10 minutes of an alert.")
    inc.communicate(app, incident, "notice", now, to=[who], marks_sent=False, title=title,
                    paragraphs=paragraphs)
    inc.log(incident, now, "alert", f"asked {person} to declare or dismiss"
            f"{' (reminder)' if reminder else ''}", author="mailflow")


def _page(app: Mailflow, incident: Incident, due: Due, now: datetime) -> bool:
    """Nobody acted: remind the first on-call person, then ask the next ones in turn."""
    if incident.status != "draft":
        return False
    people = oncall_of(app, incident.service)
    step = int(due.key)
    if not people:
        return False
    if step == 1:
        _ask(app, incident, people[0], now, reminder=True)
    elif step <= len(people):
        _ask(app, incident, people[step - 1], now, reminder=True)
    else:
        return False  # everyone on the list has been asked
    inc.plan(incident, DUE_KIND, str(step + 1), now + app.config.alerts.remind_after)
    return True


DUE_HANDLERS = {DUE_KIND: _page}


# --- declare or dismiss -------------------------------------------------------------------

_VERB = re.compile(r"^\s*(declare|dismiss)\b\s*$", re.I)
DECISION_FIELDS = ("severity", "impact", "summary")


def parse_decision(text: str) -> tuple[str, dict[str, str]]:
    """`declare` / `dismiss` on the first line, then optional `severity:`/`impact:`/`summary:`.

    The field lines are read by the same parser as reply commands and declarations.
    """
    lines = text.replace("\r\n", "\n").split("\n")
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    m = _VERB.match(lines[first]) if first is not None else None
    if first is None or m is None:
        return "", {}
    parsed = commands.parse("\n".join(lines[first + 1:]), DECISION_FIELDS)
    fields = {c.name: c.value for c in parsed.commands}
    # A value the parser refused still reaches declare_draft, whose error says why.
    for refused in parsed.refused:
        fields.setdefault(refused.name, refused.line.partition(":")[2].strip())
    return m.group(1).lower(), fields


def accept_reply(app: Mailflow, incident: Incident, reply: Reply, raw: bytes, mail_from: str,
                 now: datetime) -> Outcome:
    """A reply to a draft: `declare` opens the incident, `dismiss` closes the draft."""
    from .posting import Outcome, may_post

    if reply.is_bounce or reply.is_auto_reply:
        return Outcome(250, "2.0.0 auto-reply ignored", "auto-reply")
    sender = reply.sender
    if not may_post(app, incident, sender):
        return Outcome(550, f"5.7.1 {sender or 'this sender'} may not act on {incident.ref}",
                       "refused")
    verb, fields = parse_decision(reply.text)
    with inc.locked(app, incident):
        if incident.status != "draft":
            outcome = Outcome(250, f"2.0.0 {incident.ref} is already {incident.status}", "note")
        elif verb == "dismiss":
            dismiss(app, incident, now, sender)
            outcome = Outcome(250, f"2.0.0 {incident.ref} dismissed", "dismissed")
        elif verb == "declare":
            try:
                declare_draft(app, incident, now, sender, **fields)
                outcome = Outcome(250, f"2.0.0 declared {incident.ref}", "declared")
            except MailflowError as exc:
                inc.log(incident, now, "note", f"declare refused: {exc}", author=sender)
                outcome = Outcome(250, f"2.0.0 not declared: {exc}", "note")
        else:
            if reply.text:
                inc.log(incident, now, "note", reply.text, author=sender)
            outcome = Outcome(250, f"2.0.0 {incident.ref} is a draft: reply `declare` or "
                                   "`dismiss`; kept as a note", "note")
        InMessage.create(incident=incident, received_at=now, mail_from=mail_from,
                         sender=sender, message_id=reply.message_id, content=raw,
                         outcome=outcome.outcome)
    return outcome


def dismiss(app: Mailflow, incident: Incident, now: datetime, author: str) -> None:
    """The draft needs no communication: closed, nothing is sent, nothing more is asked."""
    incident.status = Status.DISMISSED
    incident.closed_at = now
    incident.save()
    inc.cancel_due(incident, now)
    inc.log(incident, now, "dismissed", "draft dismissed", author=author)


def declare_draft(app: Mailflow, incident: Incident, now: datetime, author: str,
                  severity: str = "", impact: str = "", summary: str = "") -> Incident:
    """Turn a draft into an open incident and queue its start notification."""
    if incident.status != "draft":
        raise InvalidInput(f"{incident.ref} is {incident.status}, not a draft")
    svc = app.contacts.service(incident.service)
    incident.severity = inc.check_severity(severity) if severity else incident.severity
    incident.impact = inc.check_impact(impact) if impact else incident.impact
    if summary.strip():
        incident.summary = one_line(summary)[:300]
    app.contacts.expand(svc.notify)  # an unknown list fails here, before anything is written
    incident.status = "open"
    incident.declared_at = now
    incident.lead = inc.check_address(author, "lead") if author else incident.lead
    incident.lead_since = now if incident.lead else None
    incident.subject = one_line(f"[{incident.ref}] {svc.title}: {incident.impact}")
    incident.save()
    inc.cancel_due(incident, now, kinds=(DUE_KIND,))
    inc.log(incident, now, "declared", f"{incident.severity} {IMPACTS[incident.impact]} "
            f"of {svc.title}: {incident.summary} (from an alert)", author=author)
    if incident.lead:
        inc.add_recipient(app, incident, incident.lead, "as the incident lead", now)
    inc.add_notified(app, incident, svc, now)
    inc.schedule_mark(app, incident, now + inc.update_every(app, incident), now)
    inc.schedule_escalations(app, incident, now)
    inc.schedule_handover(app, incident, now)
    inc.communicate(app, incident, "start", now)
    return incident


def from_cli(service: str, summary: str, severity: str = "", key: str = "",
             resolved: bool = False, impact: str = "") -> AlertGroup:
    """`mailflow alert …` → an AlertGroup; without --key, service + summary dedup it."""
    if not summary.strip():
        raise AlertError("--summary: say in one line what fired")
    return AlertGroup(source="cli", key=key.strip() or f"cli:{service}:{one_line(summary)}",
                      firing=not resolved, summary=one_line(summary)[:300],
                      labels={"service": service}, severity=severity, impact=impact,
                      service=service)
