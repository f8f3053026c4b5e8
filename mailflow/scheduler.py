"""What is due at `now`: reminders, communication marks, escalations, handovers.

Due work is stored as rows with a due time (indexed), so a tick reads only what is due,
and each row is claimed and acted on in one transaction: exactly once, across restarts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from . import alerts, posting
from . import incidents as inc
from .clock import format_duration, parse_duration
from .errors import InvalidInput, MailflowError
from .models import Due, Incident, OutMessage, is_postgres

if TYPE_CHECKING:
    from .app import Mailflow
    from .outbox import Report

log = logging.getLogger(__name__)
RETRY_FAILED = timedelta(minutes=5)


@dataclass
class TickReport:
    """What one tick did, for logs and `mailflow tick`."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    delivery: Report | None = None  # the outbox drain that followed (`tick` only)


def due_work(now: datetime, limit: int = 200) -> list[Due]:
    """Pending work due at `now`, oldest first (uses the (done_at, due_at) index)."""
    return list(Due.select().where(Due.done_at.is_null() & (Due.due_at <= now))
                .order_by(Due.due_at, Due.id).limit(limit))


def run_due(app: Mailflow, now: datetime) -> TickReport:
    """Do every due piece of work once."""
    report = TickReport()
    while True:
        batch = due_work(now)
        if not batch:
            return report
        for due in batch:
            label = f"{due.kind} {due.key} of INC-{due.incident_id}"
            try:
                with app.db.atomic("IMMEDIATE"):
                    if is_postgres(app.db) and Due.select(Due.id).where(
                            (Due.id == due.id) & Due.done_at.is_null()).for_update(
                            "FOR UPDATE SKIP LOCKED").first() is None:  # type: ignore[arg-type]
                        continue  # another instance is doing it right now
                    # Claim: if another process did it meanwhile, the update touches no row.
                    claimed = Due.update(done_at=now, outcome="done").where(
                        (Due.id == due.id) & Due.done_at.is_null()).execute()
                    if not claimed:
                        continue
                    incident = Incident.get_by_id(due.incident_id)
                    acted = HANDLERS[due.kind](app, incident, due, now)
                    if not acted:
                        Due.update(outcome="skipped").where(Due.id == due.id).execute()
            except Exception as exc:  # noqa: BLE001 - one broken job must not stop the others
                # Left pending but pushed back, so the jobs behind it run: a fixed template
                # or contacts file lets a later tick succeed.
                log.error("%s failed (retried in %s): %s", label, RETRY_FAILED, exc,
                          exc_info=not isinstance(exc, MailflowError))
                report.errors.append(f"{label}: {exc}")
                Due.update(due_at=now + RETRY_FAILED).where(
                    (Due.id == due.id) & Due.done_at.is_null()).execute()
                continue
            (report.done if acted else report.skipped).append(label)


def _reminder(app: Mailflow, incident: Incident, due: Due, now: datetime) -> bool:
    mark = incident.next_comm_at
    # Never a reminder after the deadline (PRODUCT: what the lead must never see).
    if not incident.is_open or mark is None or mark.isoformat() != due.key or now >= mark:
        return False
    to = inc.lead_recipients(app, incident, now)
    if not to:
        inc.log(incident, now, "reminder", "no lead or communicator to remind", "mailflow")
        return True
    # A reminder held up by a relay outage is never delivered after the mark it announces.
    inc.communicate(app, incident, "reminder", now, to=to, marks_sent=False, expires_at=mark)
    inc.log(incident, now, "reminder",
            f"reminded {', '.join(r.email for r in to)} of the {mark:%H:%M} UTC communication",
            "mailflow")
    return True


def _mark(app: Mailflow, incident: Incident, due: Due, now: datetime) -> bool:
    mark = incident.next_comm_at
    if not incident.is_open or mark is None or mark.isoformat() != due.key:
        return False
    every = inc.update_every(app, incident)
    following = mark + every if mark + every > now else now + every
    inc.schedule_mark(app, incident, following, now)
    inc.communicate(app, incident, "update", now)
    return True


def _escalate(app: Mailflow, incident: Incident, due: Due, now: datetime) -> bool:
    if not incident.is_open:
        return False
    threshold = parse_duration(due.key)
    svc = app.contacts.services.get(incident.service)
    # The lists of the largest contacts.yaml threshold reached: a severity with its own
    # thresholds (say 1h for P0) still reaches whoever the service names.
    lists: tuple[str, ...] = ()
    for at, names in svc.escalate if svc else ():
        if at <= threshold:
            lists = names
    reason = f"as escalation after {format_duration(threshold)} of {incident.ref}"
    to = []
    for address in app.contacts.expand(lists):
        try:
            to.append(inc.add_recipient(app, incident, address, reason, now))
        except InvalidInput as exc:
            # One address delivery refuses must not hold back the others on the list (nor
            # make the escalation fail and retry forever): skip it, and say so.
            inc.log(incident, now, "warning", f"not escalated to {address}: {exc}", "mailflow")
    to += inc.lead_recipients(app, incident, now)
    to = list({r.id: r for r in to}.values())
    tags = svc.expertise if svc else ()
    experts: list[dict[str, Any]] = [{"name": p.name, "email": p.email, "tags": list(matched)}
               for p, matched in app.contacts.experts(tags)]
    thresholds = app.config.cadence.escalate[incident.severity]
    # The last of several thresholds (1 day by default) proposes the complete workaround.
    final = len(thresholds) > 1 and threshold >= max(thresholds)
    # Third-party support next to the internal experts: how to open a ticket, how to escalate.
    vendors = [{"name": v.name, "ticket": v.ticket, "escalate": v.escalate}
               for v in app.contacts.vendors_of(incident.service)]
    inc.communicate(app, incident, "escalation", now, to=to, marks_sent=False,
                    threshold=threshold, experts=experts, expertise=list(tags), final=final,
                    vendors=vendors)
    listed = f"; vendors: {', '.join(v['name'] for v in vendors)}" if vendors else ""
    inc.log(incident, now, "escalation",
            f"escalated after {format_duration(threshold)} to {', '.join(lists) or 'the lead'}"
            f" ({', '.join(r.email for r in to)}); experts: "
            f"{', '.join(e['email'] for e in experts) or 'none listed'}{listed}", "mailflow")
    return True


def _handover(app: Mailflow, incident: Incident, due: Due, now: datetime) -> bool:
    if not incident.is_open or not incident.lead or not incident.lead_since:
        return False
    if due.key != f"{incident.lead}@{incident.lead_since.isoformat()}":
        return False
    lead = inc.add_recipient(app, incident, incident.lead, "as the incident lead", now)
    inc.communicate(app, incident, "handover", now, to=[lead], marks_sent=False,
                    led_for=now - incident.lead_since)
    inc.log(incident, now, "handover-reminder", f"reminded {incident.lead} to hand over the lead",
            "mailflow")
    return True


def _postmortem(app: Mailflow, incident: Incident, due: Due, now: datetime) -> bool:
    if incident.postmortem_done or not incident.lead:
        return False
    lead = inc.add_recipient(app, incident, incident.lead, "as the incident lead", now)
    inc.communicate(app, incident, "notice", now, to=[lead], marks_sent=False,
                    title=f"The postmortem of {incident.ref} is not done yet",
                    paragraphs=[
                        f"{incident.ref} was resolved two working days ago and its postmortem "
                        "has not been marked done.",
                        f"Write it from the draft (`mailflow postmortem {incident.ref} --out "
                        f"{incident.ref}.md`), then `mailflow postmortem {incident.ref} --done`.",
                    ])
    inc.log(incident, now, "reminder", f"reminded {incident.lead} of the postmortem", "mailflow")
    return True


def _failures(app: Mailflow, incident: Incident, due: Due, now: datetime) -> bool:
    """One notice to the lead per communication, listing every failure not yet told."""
    kind, _, created = due.key.partition("@")
    created_at = datetime.fromisoformat(created)
    failed = list(OutMessage.select(OutMessage.id, OutMessage.recipient, OutMessage.last_error)
                  .where((OutMessage.incident == incident) & (OutMessage.kind == kind)
                         & (OutMessage.created_at == created_at)
                         & (OutMessage.status == "failed") & OutMessage.failure_told_at.is_null())
                  .order_by(OutMessage.id))
    if not failed:
        return False
    OutMessage.update(failure_told_at=now).where(
        OutMessage.id.in_([m.id for m in failed])).execute()
    # The lead's own failures are not told to them (they would not arrive either).
    failed = [m for m in failed if m.recipient != incident.lead]
    if not incident.lead or not failed:
        return False
    lead = inc.add_recipient(app, incident, incident.lead, "as the incident lead", now)
    n = len(failed)
    listed = failed[:MAX_LISTED]
    lines = [f"{m.recipient}: {m.last_error}" for m in listed]
    if n > len(listed):
        lines.append(f"… and {n - len(listed)} more (`mailflow show {incident.ref}`)")
    inc.communicate(app, incident, "notice", now, to=[lead], marks_sent=False,
                    title=f"The {kind} email of {incident.ref} did not reach "
                          f"{n} recipient{'s' if n != 1 else ''}",
                    paragraphs=[f"The {kind} email queued at {created_at:%H:%M} UTC failed for:",
                                *lines,
                                "Check the addresses in contacts.yaml or with the people; "
                                f"`mailflow show {incident.ref}` lists every delivery."],
                    action="Check the failed addresses")
    return True


MAX_LISTED = 50  # failures named one by one in a notice; the rest are counted


HANDLERS: dict[str, Callable[[Mailflow, Incident, Due, datetime], bool]] = {
    "reminder": _reminder,
    "mark": _mark,
    "escalate": _escalate,
    "handover": _handover,
    "postmortem": _postmortem,
    **alerts.DUE_HANDLERS,  # reminding the on-call person of an undeclared draft
    **posting.DUE_HANDLERS,  # the hourly digest of refused strangers for the lead
    "failures": _failures,
}


def tick(app: Mailflow, now: datetime) -> TickReport:
    """Do what is due, then deliver the outbox. Safe to call as often as you like.

    `mailflow tick` is this; the daemon runs `run_due` and drains the outbox in a task of
    its own, so that a long fan-out never delays the next tick's deadlines.
    """
    report = run_due(app, now)
    report.delivery = app.deliver_now(now)
    report.errors.extend(report.delivery.errors)
    return report
