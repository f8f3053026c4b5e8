"""The incident lifecycle: declare, post updates, communicate, resolve. Pure: `now` is passed in."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, TypeVar
from zoneinfo import ZoneInfo

from . import addresses, commands, report, statuspage
from .addresses import STRICT, Rules, rules_of
from .clock import as_utc, compact_duration, parse_duration
from .composition import IMPACTS, LEAD_KINDS, PRIORITY, context, facts_of
from .config import SEVERITIES
from .errors import InvalidInput, NotFound
from .models import (
    LIVE,
    Due,
    Entry,
    EntryKind,
    Incident,
    OutMessage,
    Recipient,
    Status,
    is_postgres,
)
from .render import Envelope, Personal, one_line
from .threads import conversation_headers

if TYPE_CHECKING:
    from .app import Mailflow
    from .contacts import Contacts, Service

SCHEDULE_KINDS = ("reminder", "mark")


def check_severity(value: str) -> str:
    """Normalise "p1" to "P1"; anything else outside P0–P3 is refused."""
    sev = commands.severity_of(value)  # the one table of spellings, shared with replies
    if sev is None or sev not in SEVERITIES:
        raise InvalidInput(f"severity {value!r}: use one of {', '.join(SEVERITIES)} "
                           "(P0 critical … P3 low)")
    return sev


def check_impact(value: str) -> str:
    """"outage"/"downtime" → outage; "degraded" → degraded."""
    impact = commands.impact_of(value)
    if impact is None:
        raise InvalidInput(f"impact {value!r}: use outage (complete downtime) or degraded")
    return impact


def check_address(value: str, what: str = "address", rules: Rules = STRICT) -> str:
    """A bare, lowercased address that delivery accepts, or InvalidInput saying why."""
    return addresses.check(value, what, rules)


def get_incident(ref: str | int) -> Incident:
    """Find an incident by `INC-42`, `inc-42` or `42`."""
    m = re.fullmatch(r"(?:inc-?)?(\d+)", str(ref).strip(), re.I)
    # More than 18 digits cannot be an SQLite row id (it would overflow the query).
    ok = m is not None and len(m.group(1).lstrip("0")) <= 18
    incident = Incident.get_or_none(Incident.id == int(m.group(1))) if m and ok else None
    if incident is None:
        raise NotFound(f"no incident {ref!r}; `mailflow list` shows the incidents")
    return incident


def log(incident: Incident, now: datetime, kind: EntryKind | str, text: str, author: str = "",
        data: dict[str, Any] | None = None, shown: bool = False) -> Entry:
    """Add a timeline entry. `shown` entries are carried (in orange) by the next email."""
    kind = EntryKind(kind).value  # ValueError on an unknown kind: caught by the tests
    return Entry.create(incident=incident, at=now, kind=kind, author=author, text=text,
                        data=data, communicated_at=None if shown else now)


# --- concurrency -------------------------------------------------------------------------

F = TypeVar("F", bound=Callable[..., Any])


@contextmanager
def locked(app: Mailflow, incident: Incident) -> Iterator[Incident]:
    """Hold the write lock and refresh `incident` in place before changing it.

    The CLI and the daemon both change incidents; a row read before another process
    resolved it must not be saved back over the resolution.
    """
    if incident.__dict__.get(_FRESH):
        # Read under this very write lock (an outer `locked`, or `read_under_lock`): no
        # other writer can have changed it since, and reading it again cost a reply ~10 %.
        with app.db.atomic():
            yield incident
        return
    with app.db.atomic("IMMEDIATE"):
        query = Incident.select().where(Incident.id == incident.id)
        if is_postgres(app.db):
            # Row locks, not a database lock: other incidents' work goes on meanwhile.
            query = query.for_update()
        fresh = query.get()
        incident.__data__.update(fresh.__data__)
        incident._dirty.clear()  # type: ignore[attr-defined]  # peewee's own bookkeeping
        with read_under_lock(incident):
            yield incident


_FRESH = "_mailflow_read_under_lock"


@contextmanager
def read_under_lock(incident: Incident) -> Iterator[Incident]:
    """Declare `incident` read inside the caller's open write transaction (BEGIN IMMEDIATE):
    `locked` inside this block uses it as it is instead of reading it again."""
    outer = incident.__dict__.get(_FRESH, False)
    incident.__dict__[_FRESH] = True
    try:
        yield incident
    finally:
        incident.__dict__[_FRESH] = outer


def mutates(fn: F) -> F:
    """Run a lifecycle change under `locked`: fresh state, one transaction."""
    @functools.wraps(fn)
    def wrapper(app: Mailflow, incident: Incident, *args: Any, **kwargs: Any) -> Any:
        with locked(app, incident):
            return fn(app, incident, *args, **kwargs)
    return wrapper  # type: ignore[return-value]


# --- recipients ---------------------------------------------------------------------------

def add_recipient(app: Mailflow, incident: Incident, address: str, reason: str,
                  now: datetime, via: str = "*") -> Recipient:
    """Add someone to the incident's emails (idempotent: the first reason is kept).

    `via`: the notified list that brings them in, or "*" when they are named directly (a
    role, impacted, an escalation): what they receive follows from it (see `audience`).
    """
    email = check_address(address, rules=rules_of(app.config))
    existing = Recipient.get_or_none((Recipient.incident == incident) & (Recipient.email == email))
    if existing is not None:
        vias = [v for v in (existing.via or "").split(",") if v]
        if (existing.status != "active" and reason) or via not in vias:
            existing.status = "active" if reason else existing.status
            existing.via = ",".join([*vias, via])
            existing.save()
        return existing
    person = app.contacts.person(email)
    return Recipient.create(incident=incident, email=email, name=person.name if person else "",
                            reason=reason, added_at=now, via=via)


def add_notified(app: Mailflow, incident: Incident, service: Service, now: datetime) -> None:
    """Everyone on the service's `notify` lists, each remembering the list that brought them."""
    add_recipients(app, incident, notified(app, service), now)


def notified(app: Mailflow, service: Service) -> list[tuple[str, str, str]]:
    """(address, reason, via) for everyone on the service's `notify` lists, in order."""
    return [(addr, f"because you are on the {list_name} list for {service.title}", list_name)
            for list_name in service.notify for addr in app.contacts.expand([list_name])]


MILESTONE_KINDS = ("start", "solved")


def is_milestone(incident: Incident, kind: str, contacts: Contacts | None = None) -> bool:
    """Start, solved, and an update that changes the severity or impact (or reopens)."""
    if kind in MILESTONE_KINDS:
        return True
    if kind != "update":
        return False
    before, now = incident.last_sent or {}, facts_of(incident, contacts)
    if any(before.get(k) != now[k] for k in ("Severity", "Scope")):
        return True
    return Entry.select().where((Entry.incident == incident) & (Entry.kind == "reopened")
                                & Entry.communicated_at.is_null()).exists()


def audience(service: Service | None, via: str) -> tuple[str, frozenset[str]]:
    """What a recipient brought in by `via` receives: ("all" | "milestones", severities
    held out of working hours). The most their lists give: any "all" list, or being named
    directly, means all; mail waits only if every one of their lists lets it wait."""
    vias = [v for v in (via or "").split(",") if v]
    if service is None or not vias or "*" in vias:
        return "all", frozenset()
    gets = "all" if any(service.gets(v) == "all" for v in vias) else "milestones"
    held = frozenset.intersection(*(service.held(v) for v in vias))
    return gets, held


def add_recipients(app: Mailflow, incident: Incident,
                   wanted: Iterable[tuple[str, str, str]], now: datetime) -> None:
    """`add_recipient` for many (address, reason, via): one SELECT, one executemany INSERT.

    A declaration to 10,000 people ran 20,000 statements one by one. The outcome is the
    same: validated first, the first reason kept, every list that brings someone in
    remembered in `via`, someone inactive made active again by a reason.
    """
    rules = rules_of(app.config)
    reasons: dict[str, str] = {}
    vias: dict[str, list[str]] = {}
    revive: set[str] = set()
    for address, reason, via in wanted:
        email = check_address(address, rules=rules)
        reasons.setdefault(email, reason)
        if via not in vias.setdefault(email, []):
            vias[email].append(via)
        if reason:
            revive.add(email)
    if not reasons:
        return
    for r in Recipient.select(Recipient.id, Recipient.email, Recipient.status, Recipient.via) \
            .where(Recipient.incident == incident):
        if r.email not in reasons:
            continue
        del reasons[r.email]  # known already: as add_recipient does, row by row (rare)
        had = [v for v in (r.via or "").split(",") if v]
        merged = had + [v for v in vias[r.email] if v not in had]
        status = "active" if r.email in revive else r.status
        if merged != had or status != r.status:
            Recipient.update(via=",".join(merged), status=status).where(
                Recipient.id == r.id).execute()
    if not reasons:
        return
    # One executemany of a fixed statement: peewee's insert_many built the SQL value by value
    # (34 of a 1,000-recipient declaration's 140 ms; 10 ms now). Values as the model's
    # defaults give them: active, no error, no thread root yet (communicate sets it).
    added_at = Recipient.added_at.db_value(now)
    person = app.contacts.person
    rows = []
    for email, reason in reasons.items():
        known = person(email)
        rows.append((incident.id, email, known.name if known else "", reason, added_at,
                     ",".join(vias[email])))
    p = app.db.param
    app.db.cursor().executemany(
        f"INSERT INTO {Recipient._meta.table_name} (incident_id, email, name, reason, added_at, "
        f"status, last_error, via) VALUES ({p}, {p}, {p}, {p}, {p}, 'active', '', {p})", rows)


def personal(app: Mailflow, recipient: Recipient) -> Personal:
    """A recipient with what contacts.yaml knows about them (name, time zone)."""
    person = app.contacts.person(recipient.email)
    return Personal(
        email=recipient.email,
        name=person.name if person else recipient.name,
        reason=recipient.reason,
        timezone=person.timezone if person else None,
    )


def lead_recipients(app: Mailflow, incident: Incident, now: datetime) -> list[Recipient]:
    """The lead and the communicator: who gets reminders."""
    out = []
    for role in ("lead", "communicator"):
        addr = getattr(incident, role)
        if addr:
            out.append(add_recipient(app, incident, addr, f"as the incident {role}", now))
    return list({r.id: r for r in out}.values())


# --- sending ------------------------------------------------------------------------------

def communicate(app: Mailflow, incident: Incident, kind: str, now: datetime,
                to: Sequence[Recipient] | None = None, marks_sent: bool = True,
                expires_at: datetime | None = None, **extra: Any) -> list[str]:
    """Render `kind` once, queue one personalised copy per recipient, and log it.

    `marks_sent`: this email is a communication to everyone (start, update, solved), so what
    it carries is no longer new. Reminders and escalations leave "new" untouched.
    `expires_at`: past it, the outbox drops the email instead of sending it late.
    """
    not_before: dict[str, datetime] = {}
    skipped = 0
    if to is None:
        # Only the columns used here and by `personal`: a fan-out reads 1,000s of rows, and
        # building each full row (dates parsed) cost half of this query.
        everyone = list(Recipient.select(Recipient.id, Recipient.email, Recipient.name,
                                         Recipient.reason, Recipient.first_message_id,
                                         Recipient.via)
                        .where((Recipient.incident == incident)
                               # A bounce arrives with a token every recipient holds, so it can
                               # be forged: it is recorded, but only our own relay's 5xx stops
                               # the mail.
                               & (Recipient.status != "failed"))
                        .order_by(Recipient.id))
        to, not_before = _audience_of(app, incident, kind, everyone, now)
        skipped = len(everyone) - len(to)
    if not to:
        return []
    cfg = app.config
    own_thread = kind in LEAD_KINDS
    threads = {} if own_thread else {r.email: r.first_message_id for r in to if r.first_message_id}
    people = [personal(app, r) for r in to]
    by_email = {r.email: r for r in to}
    in_full = cfg.emails.updates_in_full
    # Imported here: the outbox module pulls in aiosmtplib, which CLI start-up should not pay.
    from .outbox import size_limit
    limit = size_limit(cfg.outbound)
    max_chars = cfg.emails.update_max_chars
    while True:
        ctx = context(app, incident, kind, now, in_full=in_full, max_chars=max_chars, **extra)
        headers = [("X-Mailflow-Incident", incident.ref), ("X-Mailflow-Kind", kind)]
        if not own_thread:  # Outlook threads by these, not by In-Reply-To
            headers += conversation_headers(f"{cfg.reply_domain}/{incident.id}",
                                            incident.subject, incident.declared_at, now)
        envelope = Envelope(
            sender=cfg.sender, subject=ctx["subject"], date=now, domain=cfg.reply_domain,
            reply_to=ctx["reply_address"], threads=threads, extra_headers=headers,
        )
        outgoing = app.renderer.personalise(kind, ctx, people, envelope)
        # Bounded size: older updates are left out (counted in a line), then the newest is
        # cut shorter, until the biggest copy fits; a relay refuses what is bigger than it
        # accepts, for everyone.
        if max(len(o.raw) for o in outgoing) <= limit or max_chars < 200:
            break
        if in_full > 1:
            in_full //= 2
        else:
            max_chars //= 2
    with app.db.atomic():
        app.outbox.enqueue(incident.id, kind, ctx["reply_address"],
                           [(o.recipient.email, o.message_id, o.raw) for o in outgoing], now,
                           expires_at=expires_at, priority=PRIORITY.get(kind, 0),
                           not_before=not_before)
        # What waited for the morning goes ahead of this email to those who get it now.
        app.outbox.release_held(incident.id, [o.recipient.email for o in outgoing
                                              if o.recipient.email not in not_before], now)
        if not own_thread:
            firsts = [(o.message_id, by_email[o.recipient.email].id) for o in outgoing
                      if not by_email[o.recipient.email].first_message_id]
            if firsts:  # one statement for all: a start email to 1,000 ran 1,000 UPDATEs
                p = app.db.param
                app.db.cursor().executemany(
                    f"UPDATE {Recipient._meta.table_name} SET first_message_id = {p} "
                    f"WHERE id = {p}", firsts)
        names = ", ".join(o.recipient.email for o in outgoing[:20])
        more = f" and {len(outgoing) - 20} more" if len(outgoing) > 20 else ""
        notes = ""
        if not_before:
            opens = min(not_before.values())
            notes += (f"; {len(not_before)} held until working hours (from "
                      f"{as_utc(opens):%Y-%m-%d %H:%M} UTC)")
        if skipped:
            notes += f"; not sent to {skipped} on milestone-only lists"
        log(incident, now, "email",
            f"{kind} email queued to {len(outgoing)}: {names}{more}{notes}",
            author="mailflow", data={"kind": kind, "count": len(outgoing),
                                     "held": len(not_before), "skipped": skipped})
        if marks_sent:
            statuspage.record(app, incident, kind, now)  # the status page's one choke point
            Entry.update(communicated_at=now).where(
                (Entry.incident == incident) & Entry.communicated_at.is_null()).execute()
            incident.last_sent = facts_of(incident, app.contacts)
            incident.last_comm_at = now
            incident.save()
    return [o.message_id for o in outgoing]


def _audience_of(app: Mailflow, incident: Incident, kind: str, everyone: Sequence[Recipient],
                 now: datetime) -> tuple[list[Recipient], dict[str, datetime]]:
    """Who gets this communication (milestone-only lists get milestones), and which copies
    wait for working hours in the recipient's time zone (email → when they may go)."""
    service = app.contacts.services.get(incident.service)
    milestone = is_milestone(incident, kind, app.contacts) if service is not None else True
    hours = app.contacts.working_hours
    to: list[Recipient] = []
    later: dict[str, datetime] = {}
    for r in everyone:
        gets, held = audience(service, r.via)
        if gets == "milestones" and not milestone:
            continue
        to.append(r)
        if incident.severity in held:
            person = app.contacts.person(r.email)
            opens = hours.opens_at(now, person.timezone if person else None)
            if opens is not None:
                later[r.email] = opens
    return to, later


def update_every(app: Mailflow, incident: Incident) -> timedelta:
    """The cadence of communications for the incident's current severity."""
    return app.config.cadence.update_every[incident.severity]


def plan(incident: Incident, kind: str, key: str, due_at: datetime) -> None:
    """Schedule work once: a new row, or a cancelled one revived (never one already done).

    The same work can be planned, cancelled and planned again (`next update: 11:00` back to
    the time first announced; P1 → P0 → P1); ignoring the old row would lose it.
    """
    Due.insert(incident=incident, kind=kind, key=key, due_at=due_at).on_conflict(
        conflict_target=[Due.incident, Due.kind, Due.key],
        update={Due.done_at: None, Due.outcome: "", Due.due_at: due_at},
        where=(Due.outcome == "cancelled"),
    ).execute()


def schedule_mark(app: Mailflow, incident: Incident, at: datetime, now: datetime) -> None:
    """Set the next communication mark, replacing any pending reminder/mark."""
    cancel_due(incident, now, kinds=SCHEDULE_KINDS)
    incident.next_comm_at = at
    incident.save()
    key = at.isoformat()
    reminder_at = at - app.config.cadence.reminder_before
    if reminder_at > now:
        plan(incident, "reminder", key, reminder_at)
    plan(incident, "mark", key, at)


def cancel_due(incident: Incident, now: datetime, kinds: Iterable[str] | None = None) -> None:
    """Cancel pending scheduled work of the incident (all of it, or of `kinds`)."""
    q = Due.update(done_at=now, outcome="cancelled").where(
        (Due.incident == incident) & Due.done_at.is_null())
    if kinds is not None:
        q = q.where(Due.kind.in_(list(kinds)))
    q.execute()


def schedule_escalations(app: Mailflow, incident: Incident, now: datetime) -> None:
    """Escalations at the thresholds of the current severity, counted from the declaration.

    Thresholds already passed under the old severity keep their (done) rows: each fires
    once. A threshold the new severity adds that is already past fires at the next tick.
    """
    wanted = {threshold_label(t): t for t in app.config.cadence.escalate[incident.severity]}
    pending = Due.select().where((Due.incident == incident) & (Due.kind == "escalate")
                                 & Due.done_at.is_null())
    for due in pending:
        if due.key not in wanted:
            Due.update(done_at=now, outcome="cancelled").where(Due.id == due.id).execute()
    for key, threshold in wanted.items():
        plan(incident, "escalate", key, incident.declared_at + threshold)


def schedule_handover(app: Mailflow, incident: Incident, now: datetime) -> None:
    """Remind the current lead to hand over `handover_after` after they took the lead."""
    cancel_due(incident, now, kinds=("handover",))
    if incident.lead and incident.lead_since:
        plan(incident, "handover", f"{incident.lead}@{incident.lead_since.isoformat()}",
             incident.lead_since + app.config.cadence.handover_after)


# --- the lifecycle ------------------------------------------------------------------------

def default_lead(service: Service) -> str:
    """The first of the service's on-call people; an incident without a lead reminds nobody."""
    if service.oncall:
        return service.oncall[0]
    raise InvalidInput(
        f"no lead for this incident: name one with --lead EMAIL, or give service "
        f"{service.key!r} an `oncall: [EMAIL, ...]` list in contacts.yaml (its first person "
        "leads by default)")


def declare(app: Mailflow, now: datetime, *, service: str, severity: str, impact: str,
            summary: str, impacted: Iterable[str] = (), eta: str = "", started: str = "",
            next_steps: str = "", lead: str | None = None, author: str = "") -> Incident:
    """Open an incident and queue the start notification. Validates everything first."""
    svc = app.contacts.service(service)
    severity = check_severity(severity)
    impact = check_impact(impact)
    summary = summary.strip()
    if not summary:
        raise InvalidInput("summary: say in one line what is broken")
    rules = rules_of(app.config)
    impacted = [check_address(a, "impacted address", rules) for a in impacted if a.strip()]
    lead = check_address(lead, "lead", rules) if lead else default_lead(svc)
    app.contacts.expand(svc.notify)  # an unknown list fails here, before anything is written
    with app.db.atomic():
        incident = Incident.create(
            service=svc.key, service_title=svc.title, severity=severity, impact=impact,
            summary=summary, impacted=impacted, eta=eta.strip(), started=started.strip(),
            next_steps=next_steps.strip(), lead=lead, lead_since=now if lead else None,
            declared_at=now, subject="(pending)",
        )
        incident.subject = one_line(f"[{incident.ref}] {svc.title}: {impact}")
        incident.save()
        log(incident, now, "declared", f"{severity} {IMPACTS[impact]} of {svc.title}: {summary}",
            author=author or lead or "")
        wanted = [(lead, "as the incident lead", "*")] if lead else []
        wanted += notified(app, svc)
        wanted += [(addr, f"because you are impacted by {incident.ref}", "*")
                   for addr in impacted]
        add_recipients(app, incident, wanted, now)
        schedule_mark(app, incident, now + update_every(app, incident), now)
        schedule_escalations(app, incident, now)
        schedule_handover(app, incident, now)
        communicate(app, incident, "start", now)
    return incident


def threshold_label(delta: timedelta) -> str:
    """An escalation key: 4h, 1d, 90m."""
    return compact_duration(delta, one_unit=True)


def message_ids(incident: Incident, kind: str) -> list[str]:
    """The Message-IDs queued for one kind of communication of the incident."""
    return [m.message_id for m in OutMessage.select(OutMessage.message_id).where(
        (OutMessage.incident == incident) & (OutMessage.kind == kind))]


def listing(show_all: bool = False, drafts: bool = False) -> list[Incident]:
    """Incidents newest first: open ones unless `show_all`; drafts only with `drafts`."""
    q = Incident.select().order_by(Incident.id.desc())
    if not show_all:
        q = q.where(Incident.status != Status.RESOLVED)
    # Drafts from alerts are not incidents until declared (nor dismissed ones ever).
    hidden = (() if drafts and show_all else (Status.DISMISSED,) if drafts
              else (Status.DRAFT, Status.DISMISSED))
    return list(q.where(Incident.status.not_in(hidden)) if hidden else q)


def mark_postmortem_done(app: Mailflow, incident: Incident, now: datetime, author: str) -> None:
    """Record that the postmortem was held: its reminders stop."""
    with locked(app, incident):
        incident.postmortem_done = True
        incident.save()
        log(incident, now, EntryKind.POSTMORTEM, "postmortem marked done", author=author)


def require_open(incident: Incident) -> None:
    """Refuse to change an incident that is already resolved."""
    if not incident.is_open:
        raise InvalidInput(f"{incident.ref} is already {incident.status}; declare a new incident "
                           "or use `mailflow close` for one with follow-up")


@mutates
def post_update(app: Mailflow, incident: Incident, text: str, author: str,
                now: datetime) -> Entry:
    """Append an update; it goes out (in orange) with the next communication."""
    require_open(incident)
    text = text.strip()
    if not text:
        raise InvalidInput("update text is empty")
    entry = log(incident, now, "update", text, author=author, shown=True)
    if incident.scribe and incident.scribe != author:
        # The scribe keeps the log, so they see every reply as it is posted.
        scribe = add_recipient(app, incident, incident.scribe, "as the incident scribe", now)
        communicate(app, incident, "notice", now, to=[scribe], marks_sent=False,
                    title=f"{author or 'someone'} posted to {incident.ref}",
                    paragraphs=[text])
    return entry


@mutates
def change(app: Mailflow, incident: Incident, now: datetime, author: str, **fields: str) -> None:
    """Change severity / impact / eta / steps; each change is logged and shown as new."""
    require_open(incident)
    labels = {"severity": "Severity", "impact": "Scope", "eta": "How long",
              "started": "What has been started", "next_steps": "Next debugging steps"}
    for name, value in fields.items():
        if value is None:
            continue
        if name == "severity":
            value = check_severity(value)
        elif name == "impact":
            value = check_impact(value)
        old = getattr(incident, name)
        if old == value:
            continue
        setattr(incident, name, value)
        log(incident, now, "change", f"{labels[name]}: {old or '—'} → {value}", author=author,
            shown=True, data={"field": name, "old": old, "new": value})
    incident.save()
    if fields.get("severity") is not None:
        schedule_escalations(app, incident, now)
        # The cadence follows the new severity from now on. A mark already announced is
        # kept if it comes sooner: stakeholders were told to expect it.
        sooner = now + update_every(app, incident)
        if incident.next_comm_at is None or sooner < incident.next_comm_at:
            schedule_mark(app, incident, sooner, now)


@mutates
def send_update(app: Mailflow, incident: Incident, now: datetime) -> list[str]:
    """Send the update now and set the next mark from the severity's cadence."""
    require_open(incident)
    schedule_mark(app, incident, now + update_every(app, incident), now)
    return communicate(app, incident, "update", now)


def when_text(at: datetime, tz: str | None = None) -> str:
    """`2026-11-24 11:00 UTC`, with the time in `tz` added: `(12:00 Europe/Zurich)`."""
    text = f"{as_utc(at):%Y-%m-%d %H:%M} UTC"
    if tz and tz != "UTC":
        local = as_utc(at).astimezone(ZoneInfo(tz))
        day = "" if local.date() == as_utc(at).date() else f"{local:%Y-%m-%d} "
        text += f" ({day}{local:%H:%M} {tz})"
    return text


def next_update_at(value: str, now: datetime, tz: str | None = None) -> datetime:
    """When `next update: VALUE` means: `30m` from now, or `14:30` today in `tz` (UTC when
    None; `14:30 UTC` is always UTC). A time already past today is refused, never taken
    to mean tomorrow: a typo must not silence the stakeholders for a day."""
    norm = commands.next_update_value(value)
    m = re.fullmatch(r"(\d{2}):(\d{2})( UTC)?", norm)
    if not m:
        return now + parse_duration(norm, what="next update")
    zone_name = "UTC" if m.group(3) or not tz else tz
    local_now = as_utc(now).astimezone(ZoneInfo(zone_name))
    at = local_now.replace(hour=int(m.group(1)), minute=int(m.group(2)), second=0,
                           microsecond=0).astimezone(timezone.utc)
    if at <= now:
        raise InvalidInput(
            f"{m.group(1)}:{m.group(2)} {zone_name} has already passed today (it is "
            f"{local_now:%H:%M} {zone_name} on {local_now:%Y-%m-%d}): give a later time, or a "
            "duration such as 30m")
    return at


@mutates
def set_next_update(app: Mailflow, incident: Incident, value: str, now: datetime,
                    author: str, tz: str | None = None) -> datetime:
    """`next update: 30m` or `next update: 14:30` (in `tz`, UTC if None) moves the next mark."""
    require_open(incident)
    at = next_update_at(value, now, tz)
    schedule_mark(app, incident, at, now)
    log(incident, now, "schedule", f"next communication moved to {when_text(at, tz)}",
        author=author)
    return at


# --- one action, one entry ----------------------------------------------------------------

FIELD_LABELS = {"severity": "Severity", "impact": "Scope", "eta": "How long",
                "started": "What has been started", "next_steps": "Next debugging steps",
                "lead": "Lead", "communicator": "Communicator", "scribe": "Scribe",
                "impacted": "Impacted"}
FIELDS = ("severity", "impact", "eta", "started", "next_steps", *("lead", "communicator",
                                                                  "scribe"))


@dataclass
class Action:
    """What one update did: its one timeline entry, what changed, what was refused."""

    entry: Entry | None = None
    changes: list[dict[str, Any]] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (what was asked, why not)
    next_comm_at: datetime | None = None

    @property
    def applied(self) -> list[str]:
        """The changes as short labels: `Severity: P1 → P2`."""
        return [change_label(c) for c in self.changes]


def change_label(change: dict[str, Any]) -> str:
    """One change in words: `Severity: P1 → P2`, `Impacted: + carol@example.org`."""
    name = change["field"]
    label = FIELD_LABELS.get(name, name)
    if name == "next_update":
        return f"Next communication: {change['text']}"
    if name == "impacted":
        return f"{label}: + {change['new']}"
    old, new = change.get("old"), change.get("new")
    if name == "impact":
        old, new = IMPACTS.get(old or "", old), IMPACTS.get(new or "", new)
    return f"{label}: {old or '—'} → {new}"


@mutates
def apply_update(app: Mailflow, incident: Incident, now: datetime, author: str, *,
                 text: str = "", fields: dict[str, str | None] | None = None,
                 impacted: Sequence[str] = (), next_update: str | None = None,
                 tz: str | None = None, strict: bool = True, note: str = "") -> Action:
    """One person's one action: text and any field, role, impacted or next-mark changes,
    recorded as ONE timeline entry (their text first, the changes in one compact line).

    `strict` (the CLI): any bad value refuses the whole action, nothing changed. Not
    strict (a reply): each bad value is refused on its own (in `Action.refused`) and the
    rest applies. `note` is added below the changes (e.g. lines posted as text only).
    """
    require_open(incident)
    action = Action()
    rules = rules_of(app.config)
    planned: list[tuple[str, Any, Any]] = []
    for name, value in (fields or {}).items():
        if value is None:
            continue
        try:
            if name == "severity":
                new: Any = check_severity(value)
            elif name == "impact":
                new = check_impact(value)
            elif name in ROLES:
                new = check_address(value, name, rules)
            elif name in FIELDS:
                new = value.strip()
            else:
                raise InvalidInput(f"unknown field {name!r}")
        except InvalidInput as exc:
            action.refused.append((f"{name.replace('_', ' ')}: {value}", str(exc)))
            continue
        planned = [p for p in planned if p[0] != name]  # the last of two wins
        if (getattr(incident, name) or "") != new:
            planned.append((name, getattr(incident, name), new))
    added: list[str] = []
    for value in impacted:
        try:
            addr = check_address(value, "impacted address", rules)
        except InvalidInput as exc:
            action.refused.append((f"impacted: {value}", str(exc)))
            continue
        if addr not in incident.impacted and addr not in added:
            added.append(addr)
    at = None
    if next_update:
        try:
            at = next_update_at(next_update, now, tz)
        except InvalidInput as exc:
            action.refused.append((f"next update: {next_update}", str(exc)))
    text = text.strip()
    if strict and action.refused:
        raise InvalidInput(f"{action.refused[0][0]}: {action.refused[0][1]}")
    for name, _old, new in planned:
        setattr(incident, name, new)
        if name in ROLES:
            add_recipient(app, incident, new, f"as the incident {name}", now)
            if name == "lead":
                incident.lead_since = now
    if added:
        incident.impacted = [*incident.impacted, *added]
        for addr in added:
            add_recipient(app, incident, addr, f"because you are impacted by {incident.ref}", now)
    if incident.is_dirty():  # a reply that only posts text changes no column of the incident
        incident.save(only=incident.dirty_fields)
    action.changes = [{"field": n, "old": o, "new": v} for n, o, v in planned]
    action.changes += [{"field": "impacted", "new": a} for a in added]
    names = {n for n, _, _ in planned}
    if "severity" in names:
        schedule_escalations(app, incident, now)
        # The cadence follows the new severity from now on. A mark already announced is
        # kept if it comes sooner: stakeholders were told to expect it.
        sooner = now + update_every(app, incident)
        if incident.next_comm_at is None or sooner < incident.next_comm_at:
            schedule_mark(app, incident, sooner, now)
    if "lead" in names:
        schedule_handover(app, incident, now)
    if at is not None:
        schedule_mark(app, incident, at, now)  # said explicitly: wins over the cadence
    action.next_comm_at = incident.next_comm_at
    if added:
        # Who receives the emails is the record's business, not news for everyone.
        action.entry = log(incident, now, "recipient",
                           f"Added {', '.join(added)} to the emails (impacted)", author=author,
                           data={"changes": [{"field": "impacted", "new": a} for a in added]})
    shown = [c for c in action.changes if c["field"] != "impacted"]
    if text or shown:
        labels = [change_label(c) for c in shown]
        if at is not None:
            labels.append(f"Next communication: {when_text(at, tz)}")
        body = "\n\n".join(part for part in (text, " · ".join(labels), note.strip()) if part)
        kind = "update" if text else ("handover" if names == {"lead"} else "change")
        data: dict[str, Any] = {"changes": shown}
        sections = report.read(text) if text else None
        if sections:  # Learned / Tried / Now / Left: grouped in emails and the postmortem
            data["report"] = sections
        if len(shown) == 1:  # the shape one-change entries always had
            data.update(shown[0])
        action.entry = log(incident, now, kind, body, author=author, shown=True, data=data)
        if text and incident.scribe and incident.scribe != author:
            # The scribe keeps the log, so they see every reply as it is posted.
            scribe = add_recipient(app, incident, incident.scribe, "as the incident scribe", now)
            communicate(app, incident, "notice", now, to=[scribe], marks_sent=False,
                        title=f"{author or 'someone'} posted to {incident.ref}",
                        paragraphs=[body])
    elif at is not None:
        log(incident, now, "schedule", f"next communication moved to {when_text(at, tz)}",
            author=author)
    return action


@mutates
def resolve(app: Mailflow, incident: Incident, now: datetime, steps: str, author: str,
            follow_up: str = "") -> list[str]:
    """Mark resolved (green, or yellow with follow-up) and queue the solved notification."""
    require_open(incident)
    steps = steps.strip()
    if not steps:
        raise InvalidInput("resolution steps are empty: say what fixed it")
    with app.db.atomic():
        incident.status = Status.FOLLOW_UP if follow_up.strip() else Status.RESOLVED
        incident.resolution = steps
        incident.follow_up = follow_up.strip()
        incident.resolved_at = now
        incident.next_comm_at = None
        if incident.status == "resolved":
            incident.closed_at = now
        incident.save()
        cancel_due(incident, now)
        log(incident, now, "resolved", steps, author=author,
            data={"grade": incident.status, "follow_up": incident.follow_up})
        sent = communicate(app, incident, "solved", now, grade=incident.status,
                           resolution=steps, follow_up=incident.follow_up, ended_at=now,
                           duration=now - incident.declared_at)
        send_postmortem(app, incident, now)
        return sent


def working_days_later(start: datetime, days: int) -> datetime:
    """`days` working days (Monday to Friday) after `start`."""
    at = start
    while days:
        at += timedelta(days=1)
        if at.weekday() < 5:
            days -= 1
    return at


def send_postmortem(app: Mailflow, incident: Incident, now: datetime) -> None:
    """Email the postmortem draft to the lead; remind them after 2 working days."""
    from .postmortem import draft  # postmortem imports this module

    if not incident.lead:
        return
    lead = add_recipient(app, incident, incident.lead, "as the incident lead", now)
    communicate(app, incident, "notice", now, to=[lead], marks_sent=False,
                title=f"Postmortem draft for {incident.ref}",
                paragraphs=[
                    "The incident is resolved. Below is a postmortem draft following our "
                    "template, filled from the timeline; complete the TODO parts with the team "
                    "(blameless: systems and decisions, not people).",
                    f"Get it as a file with `mailflow postmortem {incident.ref} --out "
                    f"{incident.ref}.md`; mark it done with `mailflow postmortem {incident.ref} "
                    "--done`.",
                ],
                preformatted=draft(app, incident, now))
    log(incident, now, "postmortem", f"postmortem draft sent to {incident.lead}", "mailflow")
    Due.insert(incident=incident, kind="postmortem", key="reminder",
               due_at=working_days_later(now, 2)).on_conflict_ignore().execute()


@mutates
def close(app: Mailflow, incident: Incident, now: datetime, author: str,
          note: str = "") -> list[str]:
    """Follow-up done: send the final green notice of an incident resolved with follow-up."""
    if incident.status != "follow-up":
        raise InvalidInput(f"{incident.ref} is {incident.status}: only an incident resolved with "
                           "--follow-up is closed later")
    with app.db.atomic():
        incident.status = Status.RESOLVED
        incident.closed_at = now
        incident.save()
        done = note.strip() or f"Follow-up done: {incident.follow_up}"
        log(incident, now, "closed", done, author=author)
        return communicate(app, incident, "solved", now, grade="resolved",
                           resolution=f"{incident.resolution}\n{done}", follow_up="",
                           ended_at=incident.resolved_at,
                           duration=incident.resolved_at - incident.declared_at)


def describe(incident: Incident) -> dict[str, Any]:
    """The incident as JSON-ready data (for `show --json`)."""
    def iso(value: datetime | None) -> str | None:
        return value.isoformat().replace("+00:00", "Z") if value else None

    messages: dict[str, list[dict[str, Any]]] = {}
    for m in OutMessage.select().where(OutMessage.incident == incident).order_by(OutMessage.id):
        # Not tried yet: when it may go (later than now: held for working hours).
        untried = m.status == "queued" and not m.attempts and not m.last_error
        messages.setdefault(m.recipient, []).append({
            "kind": m.kind, "message_id": m.message_id, "status": m.status,
            "attempts": m.attempts, "sent_at": iso(m.sent_at), "error": m.last_error or None,
            "not_before": iso(m.next_attempt_at) if untried else None,
        })
    return {
        "ref": incident.ref, "service": incident.service, "service_title": incident.service_title,
        "status": incident.status, "severity": incident.severity, "impact": incident.impact,
        "summary": incident.summary, "impacted": incident.impacted, "eta": incident.eta,
        "started": incident.started, "next_steps": incident.next_steps,
        "lead": incident.lead, "communicator": incident.communicator, "scribe": incident.scribe,
        "declared_at": iso(incident.declared_at), "resolved_at": iso(incident.resolved_at),
        "closed_at": iso(incident.closed_at), "next_communication_at": iso(incident.next_comm_at),
        "subject": incident.subject, "resolution": incident.resolution or None,
        "follow_up": incident.follow_up or None,
        "recipients": [
            {"email": r.email, "name": r.name, "reason": r.reason, "status": r.status,
             "error": r.last_error or None, "messages": messages.get(r.email, [])}
            for r in Recipient.select().where(Recipient.incident == incident).order_by(Recipient.id)
        ],
        "timeline": [e.as_dict() for e in
                     Entry.select().where(Entry.incident == incident).order_by(Entry.at, Entry.id)],
    }


ROLES = ("lead", "communicator", "scribe")


@mutates
def assign(app: Mailflow, incident: Incident, now: datetime, author: str,
           **roles: str | None) -> None:
    """Give a role to someone; a new lead restarts the handover clock."""
    require_open(incident)
    for role, value in roles.items():
        if role not in ROLES:
            raise InvalidInput(f"unknown role {role!r}: use lead, communicator or scribe")
        if value is None:
            continue
        addr = check_address(value, role, rules_of(app.config))
        old = getattr(incident, role)
        if old == addr:
            continue
        setattr(incident, role, addr)
        add_recipient(app, incident, addr, f"as the incident {role}", now)
        kind = "handover" if role == "lead" else "change"
        log(incident, now, kind, f"{role.capitalize()}: {old or '—'} → {addr}", author=author,
            shown=True, data={"field": role, "old": old, "new": addr})
        if role == "lead":
            incident.lead_since = now
    incident.save()
    if roles.get("lead"):
        schedule_handover(app, incident, now)


@mutates
def add_impacted(app: Mailflow, incident: Incident, address: str, now: datetime,
                 author: str) -> Recipient:
    """Add people to the emails, from the next email on."""
    addr = check_address(address, "impacted address", rules_of(app.config))
    if addr not in incident.impacted:
        incident.impacted = [*incident.impacted, addr]
        incident.save()
        # Recorded, not broadcast: who receives the emails is not news for everyone.
        log(incident, now, "recipient", f"Added {addr} to the emails (impacted)",
            author=author, data={"field": "impacted", "new": addr})
    return add_recipient(app, incident, addr, f"because you are impacted by {incident.ref}", now)


@mutates
def reopen(app: Mailflow, incident: Incident, now: datetime, author: str, text: str = "",
           notify: bool = True) -> list[str]:
    """Back to open with its cadence (marks, reminders, escalations, handover rescheduled);
    everyone is told at once unless `notify` is False (the caller sends the update)."""
    if incident.is_open:
        raise InvalidInput(f"{incident.ref} is open; only a resolved incident is reopened")
    if incident.status not in (Status.RESOLVED, Status.FOLLOW_UP):
        raise InvalidInput(f"{incident.ref} is {incident.status}; only a resolved incident is "
                           "reopened")
    was = incident.status
    incident.status = "open"
    incident.resolved_at = None
    incident.closed_at = None
    incident.save()
    cancel_due(incident, now, kinds=("postmortem",))  # its draft waits for the new end
    schedule_escalations(app, incident, now)
    schedule_mark(app, incident, now + update_every(app, incident), now)
    text = text.strip()
    log(incident, now, "reopened", f"Reopened (was {was}){': ' + text if text else ''}",
        author=author, shown=True, data={"was": was, "text": text})
    return send_update(app, incident, now) if notify else []


def remove_person(app: Mailflow, email: str, now: datetime, author: str) -> list[str]:
    """Take someone off every open incident (recipients, roles, impacted), with a timeline
    entry each; their later replies are a stranger's. Returns the refs they were on."""
    address = addresses.normalise(email) or str(email).strip().lower()
    refs = []
    with app.db.atomic("IMMEDIATE"):
        live = Incident.status.in_(LIVE)
        for incident in Incident.select().where(live):
            roles = [r for r in ROLES if getattr(incident, r) == address]
            listed = address in incident.impacted
            gone = Recipient.delete().where((Recipient.incident == incident)
                                            & (Recipient.email == address)).execute()
            if not (roles or listed or gone):
                continue
            for role in roles:
                setattr(incident, role, None)
            if listed:
                incident.impacted = [a for a in incident.impacted if a != address]
            incident.save()
            what = ["the recipients"] if gone else []
            what += [f"the {role} role" for role in roles]
            what += ["the impacted people"] if listed else []
            log(incident, now, "removed",
                f"{address} removed from contacts.yaml: taken off {', '.join(what)}",
                author=author, data={"email": address, "roles": roles})
            refs.append(incident.ref)
    return refs
