"""The static status page: HTML, an Atom feed and Statuspage-style JSON, for two audiences.

Every communication (start, update, solved) becomes a status update. The **internal**
page shows each one as it goes out; the **external** page shows an update only once the
lead has published it (`publish` by reply, `mailflow publish`), with only public fields:
service, scope, status and the published text; never names, addresses or notes.

Files are written after the database change that caused them has committed (the next
delivery of the outbox, in the daemon or in the CLI command), into `[status] dir`:
`internal/` and `external/`, each with `index.html`, `incidents/INC-N.html`, `feed.atom`
and `api/v2/summary.json` + `api/v2/incidents.json`. `[status] after_write` then runs in
a thread with a timeout (an rsync to a host that does not share the outage); a failure is
logged and retried a minute later, and never holds up mail.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import incidents as inc
from .errors import InvalidInput, NotFound
from .models import Entry, Incident, StatusUpdate

if TYPE_CHECKING:
    from .app import Mailflow

log = logging.getLogger(__name__)
KINDS = {"start": "investigating", "update": "identified", "solved": "resolved"}
SHOWN = ("open", "follow-up", "resolved")  # drafts and dismissed drafts are never shown
HISTORY = timedelta(days=90)
RETRY = timedelta(minutes=1)
_dirty: dict[int, bool] = {}  # id(app) → files to rewrite once the change has committed


# --- recording ----------------------------------------------------------------------------

def internal_text(incident: Incident, kind: str, now: datetime) -> str:
    """What the communication said, in a line or two: the summary, new updates, resolution."""
    if kind == "start":
        return incident.summary
    if kind == "solved":
        return f"Resolved: {incident.resolution}" if incident.resolution else "Resolved."
    news = (Entry.select().where((Entry.incident == incident) & (Entry.kind == "update")
                                 & Entry.communicated_at.is_null())
            .order_by(Entry.at, Entry.id))
    text = "\n".join(e.text for e in news)
    return text or "No new information; the investigation continues."


def record(app: Mailflow, incident: Incident, kind: str, now: datetime) -> None:
    """A communication went out: a status update (pending for the external page)."""
    if kind not in KINDS or incident.status not in SHOWN:
        return
    update = StatusUpdate.create(incident=incident, at=now, kind=kind, status=KINDS[kind],
                                 text=internal_text(incident, kind, now))
    mark_dirty(app)
    if app.config.status.dir is not None and incident.lead:
        ask_to_publish(app, incident, incident.lead, update, now)


def ask_to_publish(app: Mailflow, incident: Incident, address: str, update: StatusUpdate,
                   now: datetime) -> None:
    """The lead decides what the outside world reads: a reply `publish` puts it out."""
    lead = inc.add_recipient(app, incident, address, "as the incident lead", now)
    inc.communicate(app, incident, "notice", now, to=[lead], marks_sent=False,
                    title=f"Publish the {update.kind} of {incident.ref} on the status page?",
                    paragraphs=[
                        "The internal status page shows it already. The public one will say:",
                        update.text,
                        "Reply `publish` to put it out as it is, or `publish: other words` to "
                        "say it differently (no names or internal details: anyone can read "
                        f"it). Or run `mailflow publish {incident.ref} [--text …]`.",
                    ])


def mark_dirty(app: Mailflow) -> None:
    """The page needs writing at the next flush."""
    _dirty[id(app)] = True


def publish(app: Mailflow, incident: Incident, now: datetime, author: str,
            text: str = "") -> StatusUpdate:
    """Publish the incident's latest pending update (optionally with other words)."""
    pending = (StatusUpdate.select().where((StatusUpdate.incident == incident)
                                           & StatusUpdate.published_at.is_null())
               .order_by(StatusUpdate.id.desc()).first())
    if pending is None:
        raise NotFound(f"{incident.ref} has no pending status update to publish")
    pending.public_text = " ".join(text.split()) if text.strip() else pending.text
    if not pending.public_text:
        raise InvalidInput("publish: the text is empty")
    private = private_words(app, pending.public_text)
    if private:
        raise InvalidInput(
            f"publish: the text names {', '.join(private)}; anyone can read the status page, "
            "so say it without names or addresses: `publish: other words` (or --text)")
    pending.published_at, pending.published_by = now, author
    pending.save()
    # Earlier pending updates are superseded: the external page moves on to this one.
    StatusUpdate.update(published_by="superseded").where(
        (StatusUpdate.incident == incident) & StatusUpdate.published_at.is_null()
        & (StatusUpdate.id < pending.id)).execute()
    inc.log(incident, now, "published", f"status page: {pending.public_text}", author=author)
    from . import subscribers
    sent = subscribers.notify(app, incident, pending, now)
    if sent:
        inc.log(incident, now, "email", f"published update queued to {sent} subscriber(s)",
                author="mailflow", data={"kind": "subscriber", "count": sent})
    mark_dirty(app)
    return pending


_ADDRESS = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")


def private_words(app: Mailflow, text: str) -> list[str]:
    """Addresses and the names of contacts.yaml's people found in `text` (must stay inside)."""
    found = _ADDRESS.findall(text)
    lowered = text.lower()
    for person in app.contacts.people.values():
        name = (person.name or "").strip()
        if len(name) >= 3 and re.search(rf"(?<!\w){re.escape(name.lower())}(?!\w)", lowered):
            found.append(name)
    return list(dict.fromkeys(found))


# --- the pages ----------------------------------------------------------------------------

def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def component_status(incident: Incident) -> str:
    """Statuspage's component status for an open incident."""
    if incident.impact == "outage":
        return "major_outage" if incident.severity in ("P0", "P1") else "partial_outage"
    return "degraded_performance"


IMPACT = {"P0": "critical", "P1": "major", "P2": "minor", "P3": "minor"}
INDICATOR_RANK = ["none", "minor", "major", "critical"]
COMPONENT_LABEL = {"operational": "Operational", "degraded_performance": "Degraded performance",
                   "partial_outage": "Partial outage", "major_outage": "Major outage"}


@dataclass
class View:
    """One incident as one audience sees it."""

    incident: Incident
    updates: list[StatusUpdate]
    external: bool

    @property
    def ref(self) -> str:
        return self.incident.ref

    @property
    def name(self) -> str:
        """Internally the summary; externally the published words of the first update."""
        if not self.external:
            return self.incident.summary
        return f"{self.incident.service_title}: {inc.IMPACTS[self.incident.impact]}"

    @property
    def status(self) -> str:
        """Externally what the last published update said; internally the incident's state."""
        if self.external:
            return self.updates[-1].status if self.updates else "investigating"
        if self.incident.status != "open":
            return "resolved"
        return self.updates[-1].status if self.updates else "investigating"

    @property
    def is_open(self) -> bool:
        """Open for this audience: outside, until the solved update is published."""
        return self.status != "resolved"

    @property
    def resolved_at(self) -> datetime | None:
        """When it ended, once this audience has been told so."""
        return None if self.is_open else self.incident.resolved_at

    def when(self, update: StatusUpdate) -> datetime:
        """When this audience was told: outside, the moment it was published."""
        return update.published_at if self.external and update.published_at else update.at

    def body(self, update: StatusUpdate) -> str:
        return (update.public_text or "") if self.external else update.text

    @property
    def latest(self) -> str:
        return self.body(self.updates[-1]) if self.updates else ""


def views(app: Mailflow, now: datetime, external: bool) -> list[View]:
    """The incidents of the last 90 days (and every open one), newest first."""
    q = (Incident.select().where(Incident.status.in_(SHOWN)
                                 & ((Incident.declared_at >= now - HISTORY)
                                    | (Incident.status == "open")))
         .order_by(Incident.declared_at.desc(), Incident.id.desc()))
    out = []
    for incident in q:
        ups = StatusUpdate.select().where(StatusUpdate.incident == incident)
        if external:
            ups = ups.where(StatusUpdate.published_at.is_null(False))
        updates = list(ups.order_by(StatusUpdate.at, StatusUpdate.id))
        if external and not updates:
            continue  # nothing published yet: the outside world has not been told
        out.append(View(incident, updates, external))
    return out


def components(app: Mailflow, shown: list[View]) -> list[dict[str, Any]]:
    """Each service of contacts.yaml with its current Statuspage status."""
    out = []
    for position, (key, svc) in enumerate(sorted(app.contacts.services.items()), start=1):
        status = "operational"
        for v in shown:
            if v.incident.service == key and v.is_open:
                worse = component_status(v.incident)
                order = list(COMPONENT_LABEL)
                status = max(status, worse, key=order.index)
        out.append({"id": key, "name": svc.title, "status": status, "position": position,
                    "description": None, "group_id": None, "group": False,
                    "only_show_if_degraded": False, "showcase": True})
    return out


def _incident_json(v: View, page_id: str, base: str) -> dict[str, Any]:
    i = v.incident
    return {
        "id": v.ref, "name": v.name, "status": v.status, "impact": IMPACT[i.severity],
        "created_at": _iso(i.declared_at), "started_at": _iso(i.declared_at),
        "updated_at": _iso(v.when(v.updates[-1]) if v.updates else i.declared_at),
        "monitoring_at": None, "resolved_at": _iso(v.resolved_at), "page_id": page_id,
        "shortlink": f"{base}incidents/{v.ref}.html",
        "incident_updates": [{
            "id": f"{v.ref}-{u.id}", "incident_id": v.ref, "status": u.status,
            "body": v.body(u), "created_at": _iso(u.at), "updated_at": _iso(u.at),
            "display_at": _iso(v.when(u)),
            "affected_components": [{"code": i.service, "name": i.service_title,
                                     "new_status": component_status(i)
                                     if u.status != "resolved" else "operational"}],
            "deliver_notifications": True,
        } for u in reversed(v.updates)],
        "components": [{"id": i.service, "name": i.service_title}],
    }


def documents(app: Mailflow, now: datetime, external: bool) -> dict[str, Any]:
    """summary.json and incidents.json for one audience, as Statuspage's v2 API shapes them."""
    title = app.config.status.title
    shown = views(app, now, external)
    comps = components(app, shown)
    page_id = "external" if external else "internal"
    page = {"id": page_id, "name": title, "url": "", "time_zone": "Etc/UTC",
            "updated_at": _iso(now)}
    incidents = [_incident_json(v, page_id, "") for v in shown]
    unresolved = [i for i in incidents if i["status"] != "resolved"]
    indicator = max((i["impact"] for i in unresolved), key=INDICATOR_RANK.index, default="none")
    description = "All Systems Operational" if indicator == "none" else \
        {"minor": "Minor Service Outage", "major": "Partial System Outage",
         "critical": "Major System Outage"}[indicator]
    status = {"indicator": indicator, "description": description}
    return {
        "summary": {"page": page, "status": status, "components": comps,
                    "incidents": unresolved, "scheduled_maintenances": []},
        "incidents": {"page": page, "incidents": incidents},
    }


def _env() -> Any:
    import jinja2  # heavy: only when a page is written, not at CLI start-up

    from .render import builtin_templates

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(builtin_templates() / "status")),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["utc"] = lambda d: f"{d:%Y-%m-%d %H:%M} UTC" if d else ""
    return env


def _write(path: Path, text: str) -> None:
    """Write atomically: a reader (or rsync) never sees half a page."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _feed(app: Mailflow, shown: list[View], now: datetime, external: bool) -> str:
    from feedgen.feed import FeedGenerator

    fg = FeedGenerator()
    audience = "external" if external else "internal"
    fg.id(f"urn:mailflow:{app.config.reply_domain}:status:{audience}")
    fg.title(app.config.status.title)
    fg.link(href="index.html", rel="alternate")
    fg.updated(now)
    fg.language("en")
    entries = sorted(((v, u) for v in shown for u in v.updates), key=lambda vu: vu[1].at)
    for v, u in entries[-200:]:
        e = fg.add_entry(order="append")
        e.id(f"urn:mailflow:{app.config.reply_domain}:{audience}:{v.ref}:{u.id}")
        e.title(f"{v.name} — {u.status}")
        e.link(href=f"incidents/{v.ref}.html")
        e.updated(u.published_at if external and u.published_at else u.at)
        e.content(v.body(u), type="text")
    return fg.atom_str(pretty=True).decode("utf-8")


def write(app: Mailflow, now: datetime) -> list[Path]:
    """Write both audiences' pages into `[status] dir`; returns the files written."""
    folder = app.config.status.dir
    if folder is None:
        return []
    env = _env()
    written = []
    for external in (False, True):
        root = folder / ("external" if external else "internal")
        shown = views(app, now, external)
        docs = documents(app, now, external)
        common = {"title": app.config.status.title, "now": now, "external": external,
                  "components": docs["summary"]["components"], "labels": COMPONENT_LABEL,
                  "status": docs["summary"]["status"]}
        pages = {root / "index.html": env.get_template("index.html").render(
            **common, open=[v for v in shown if v.is_open],
            past=[v for v in shown if not v.is_open], base="")}
        for v in shown:
            pages[root / "incidents" / f"{v.ref}.html"] = env.get_template("incident.html") \
                .render(**common, v=v, base="../")
        pages[root / "feed.atom"] = _feed(app, shown, now, external)
        pages[root / "api" / "v2" / "summary.json"] = json.dumps(docs["summary"], indent=2)
        pages[root / "api" / "v2" / "incidents.json"] = json.dumps(docs["incidents"], indent=2)
        for path, text in pages.items():
            _write(path, text)
            written.append(path)
    return written


# --- after each change --------------------------------------------------------------------

class AfterWrite:
    """Runs `[status] after_write` in a thread: one at a time, retried after a failure."""

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self.retry_at: datetime | None = None
        self.last_error = ""

    def start(self, app: Mailflow, now: datetime) -> None:
        command = app.config.status.after_write
        if not command or (self.thread is not None and self.thread.is_alive()):
            return
        self.retry_at = None
        cwd, timeout = app.config.status.dir, app.config.status.after_write_timeout
        self.thread = threading.Thread(target=self._run, args=(command, cwd, timeout, now),
                                       name="status-after-write")
        self.thread.start()

    def _run(self, command: str, cwd: Path | None, timeout: float, now: datetime) -> None:
        try:
            done = subprocess.run(command, shell=True, cwd=cwd, timeout=timeout,
                                  capture_output=True, text=True)
            error = "" if done.returncode == 0 else \
                f"exit {done.returncode}: {(done.stderr or done.stdout).strip()[-300:]}"
        except subprocess.TimeoutExpired:
            error = f"no answer after {timeout:g} s"
        except OSError as exc:
            error = str(exc)
        self.last_error = error
        if error:
            # Reported, and retried at the next flush a minute later; mail goes on.
            log.error("status page after_write %r failed (retried in 1 min): %s", command,
                      error)
            self.retry_at = now + RETRY
        else:
            log.info("status page copied (after_write ok)")

    def wait(self) -> None:
        """For the CLI: let the command finish before the process exits."""
        if self.thread is not None:
            self.thread.join()


_after: dict[int, AfterWrite] = {}


def flush(app: Mailflow, now: datetime) -> bool:
    """Write the pages if something changed (or a failed after_write is due for a retry)."""
    runner = _after.setdefault(id(app), AfterWrite())
    retry = runner.retry_at is not None and now >= runner.retry_at
    if not _dirty.pop(id(app), False) and not retry:
        return False
    if app.config.status.dir is None:
        return False
    try:
        write(app, now)
    except OSError as exc:
        log.error("status page not written to %s: %s", app.config.status.dir, exc)
        _dirty[id(app)] = True
        return False
    runner.start(app, now)
    return True


def wait(app: Mailflow) -> None:
    """Let a running after_write finish (CLI commands, before they exit)."""
    runner = _after.get(id(app))
    if runner is not None:
        runner.wait()
