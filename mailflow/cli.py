"""The `mailflow` command: a thin click layer over the library. MailflowError → exit 1 + hint."""

from __future__ import annotations

import json
import os
import re
import secrets
import sys
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import peewee

from . import clock, composition
from . import incidents as inc
from .app import Mailflow
from .clock import parse_duration
from .config import EXAMPLE_TOML, find_config, load_config
from .contacts_cli import HelpGroup, contacts
from .errors import InvalidInput, MailflowError
from .models import Incident, OutMessage
from .render import Personal, builtin_templates

if TYPE_CHECKING:
    from .outbox import Report


class Group(HelpGroup):
    """Turns every MailflowError into a one-line `Error: …` and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MailflowError as exc:
            raise click.ClickException(str(exc)) from None
        except peewee.OperationalError as exc:
            raise click.ClickException(
                f"database: {exc}; is another mailflow holding it? try again") from None
        except BrokenPipeError:
            # The reader went away (`mailflow show INC-1 | head`): click's main() exits 1
            # without a word, like other Unix tools.
            raise
        except OSError as exc:
            raise click.ClickException(f"{exc.filename or 'file'}: {exc.strerror or exc}") \
                from None


class State:
    """Lazily opened application, so `init` and `--help` need no config."""

    def __init__(self, config_path: str | None) -> None:
        self.config_path = find_config(config_path)
        self._app: Mailflow | None = None

    @property
    def app(self) -> Mailflow:
        if self._app is None:
            self._app = Mailflow(load_config(self.config_path))
        return self._app

    def close(self) -> None:
        if self._app is not None:
            self._app.close()


pass_state = click.make_pass_decorator(State)


def default_author() -> str:
    """Who is acting, for the timeline: $MAILFLOW_USER, else the login name."""
    return os.environ.get("MAILFLOW_USER") or os.environ.get("USER") or "cli"


author_option = click.option(
    "--author", default=default_author, show_default="$MAILFLOW_USER, else your login name",
    help="Who is acting, recorded in the timeline. Set MAILFLOW_USER=you@example.org once "
         "in your shell so that every command records your address.")

# Below this many emails a delivery is quick: no progress bar.
PROGRESS_FROM = 50


def on_terminal() -> bool:
    """Progress bars go to stderr, and only when a person watches it."""
    return sys.stderr.isatty()


def preparing(what: str) -> None:
    """On a terminal, say what the next seconds are spent on (10,000 emails take ~15 s)."""
    if on_terminal():
        click.echo(f"preparing the {what}…", err=True)


def deliver(app: Mailflow, now: Any, what: str = "", ids: Sequence[str] = (),
            incident: Incident | None = None, err: bool = False) -> Report:
    """Deliver what is queued and say what went where; any email not sent is an error.

    `ids` are the Message-IDs of the communication just queued (`what`, e.g. "update"):
    the summary counts those, not the other mail that went out in the same run. A relay
    outage is an error too, but the mail stays queued for `tick` or the daemon.
    """
    total = app.outbox.pending()
    if total >= PROGRESS_FROM and on_terminal():
        with click.progressbar(length=total, label=f"sending {total} emails",
                               file=sys.stderr) as bar:
            report = app.deliver_now(now, on_attempt=lambda: bar.update(1))
    else:
        report = app.deliver_now(now)
    unsent: list[OutMessage] = []
    if incident is not None and ids:
        unsent = app.outbox.unsent(ids)
        click.echo(f"{what} sent to {len(ids) - len(unsent)} of {len(ids)}", err=err)
        for m in unsent[:20]:
            why = m.last_error or "not tried yet"
            click.echo(f"  not sent to {m.recipient} ({m.status}): {why}", err=err)
        if len(unsent) > 20:
            click.echo(f"  and {len(unsent) - 20} more; `mailflow show {incident.ref}` lists "
                       "them all", err=err)
    if report.retrying:
        waiting = app.outbox.pending()
        raise MailflowError(
            f"{report.errors[0]}; {waiting} email(s) wait in the outbox and "
            "`mailflow tick` (or the daemon) retries them")
    failed = [m for m in unsent if m.status == "failed"]
    if failed:
        first = failed[0]
        raise MailflowError(
            f"{len(failed)} of {len(ids)} {what} email(s) failed, first {first.recipient}: "
            f"{first.last_error}; fix the address in contacts.yaml (the lead is told)")
    if report.failed:
        raise MailflowError(f"{report.failed} email(s) failed: {report.errors[0]}")
    return report


def check_next_update(value: str) -> None:
    """Refuse a --next-update that is no time of day (25:00) or beyond any sensible mark."""
    m = re.fullmatch(r"\s*(\d{1,2}):(\d{2})(?:\s*utc)?\s*", value, re.IGNORECASE)
    if m:
        if int(m.group(1)) > 23 or int(m.group(2)) > 59:
            raise InvalidInput(f"--next-update {value!r} is not a time of day: write HH:MM "
                               "from 00:00 to 23:59 (UTC), or a duration such as 30m")
        return
    if parse_duration(value, what="--next-update") > MAX_NEXT_UPDATE:
        raise InvalidInput(f"--next-update {value!r} is too far ahead: the next communication "
                           f"must be within {MAX_NEXT_UPDATE.days} days")


# Stakeholders expect news at least this often; a longer wait is a typo (3000000d).
MAX_NEXT_UPDATE = timedelta(days=30)


def when(iso: str | None, today: date) -> str:
    """An ISO time for people: `14:05` today, `2026-11-23 14:05` on any other day."""
    if not iso:
        return ""
    at = datetime.fromisoformat(iso)
    return f"{at:%H:%M}" if at.date() == today else f"{at:%Y-%m-%d %H:%M}"


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", metavar="FILE", envvar="MAILFLOW_CONFIG",
              help="Config file (default: $MAILFLOW_CONFIG, else ./mailflow.toml).")
@click.version_option(package_name="mailflow")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """Incident communication over plain email.

    \b
    Example (a first run in an empty folder; the emails land in ./mail/):
      mailflow init
      mailflow declare --service learn --severity P1 --impact outage \\
          --summary "Learn platform returns 502" --lead ana@example.org
      mailflow show INC-1
    """
    ctx.obj = State(config_path)
    ctx.call_on_close(ctx.obj.close)


SYSTEM_CONFIG = Path("/etc/mailflow")
SYSTEM_STATE = Path("/var/lib/mailflow")


def example_config(state: Path | None) -> str:
    """The example mailflow.toml; with `state`, its database and Maildir live there."""
    text = EXAMPLE_TOML.format(secret=secrets.token_hex(24))
    if state is None:
        return text
    lines = {'database = "mailflow.db"': f'database = "{state / "mailflow.db"}"',
             '# maildir = "mail"': f'maildir = "{state / "mail"}"'}
    out = []
    for line in text.splitlines(keepends=True):
        key = next((k for k in lines if line.startswith(k)), None)
        out.append(lines.pop(key) + "\n" if key else line)
    if lines:  # the example changed shape: fail loudly rather than write a wrong config
        raise MailflowError(f"cannot place the state paths in the example config: {list(lines)}")
    return "".join(out)


@cli.command()
@click.option("--dir", "folder", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to write the files (default: here; /etc/mailflow with --system).")
@click.option("--system", is_flag=True,
              help="For the systemd unit: config in /etc/mailflow, database and Maildir in "
                   "$STATE_DIRECTORY, else /var/lib/mailflow. Run it as the service's user.")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the database and the Maildir in this folder (absolute paths).")
def init(folder: Path | None, system: bool, state_dir: Path | None) -> None:
    """Write mailflow.toml and contacts.yaml; never overwrites an existing file.

    \b
    Example:
      mailflow init && mailflow contacts check
      runuser -u mailflow -- /opt/mailflow/bin/mailflow init --system
    """
    if system:
        folder = folder or SYSTEM_CONFIG
        state_dir = state_dir or Path(os.environ.get("STATE_DIRECTORY", "").split(":")[0]
                                      or SYSTEM_STATE)
    folder = folder or Path(".")
    folder.mkdir(parents=True, exist_ok=True)
    if state_dir is not None:
        state_dir = state_dir.absolute()
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not os.access(state_dir, os.W_OK | os.X_OK):
            raise MailflowError(f"{state_dir}: not writable by you; run `mailflow init` as the "
                                "user the service runs as (e.g. runuser -u mailflow -- …)")
    files = {
        "mailflow.toml": example_config(state_dir),
        # A copy, never a link: `mailflow contacts add` edits this file, not the package.
        "contacts.yaml": (builtin_templates() / "contacts.yaml").read_text(encoding="utf-8"),
    }
    for name, text in files.items():
        path = folder / name
        if path.exists():
            click.echo(f"kept {path} (exists)")
            continue
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        click.echo(f"wrote {path}")
    if state_dir is not None:
        click.echo(f"database and Maildir: {state_dir}")


@cli.command()
@click.option("--service", required=True, help="Service key from contacts.yaml.")
@click.option("--severity", required=True,
              help="P0 (critical), P1 (high), P2 (medium) or P3 (low).")
@click.option("--impact", required=True, help="outage (complete downtime) or degraded.")
@click.option("--summary", required=True, help="One line: what is broken.")
@click.option("--impacted", multiple=True, metavar="EMAIL",
              help="Someone impacted, added to the emails (repeatable).")
@click.option("--eta", default="", help="How long it will last, or what makes it uncertain.")
@click.option("--started", default="", help="What has been started.")
@click.option("--next-steps", default="", help="The next debugging steps.")
@click.option("--lead", default=None, metavar="EMAIL",
              help="The incident lead (default: the first of the service's `oncall` people "
                   "in contacts.yaml).")
@click.option("--queue-only", is_flag=True, help="Queue the start emails; `tick` sends them.")
@author_option
@pass_state
def declare(state: State, service: str, severity: str, impact: str, summary: str,
            impacted: tuple[str, ...], eta: str, started: str, next_steps: str,
            lead: str | None, queue_only: bool, author: str) -> None:
    """Declare an incident and send the start notification; prints the reference first.

    An incident always has a lead, who gets the reminders: --lead, else the first of the
    service's `oncall` people in contacts.yaml.

    \b
    Example:
      mailflow declare --service learn --severity P1 --impact outage \\
          --summary "Learn platform returns 502" --lead ana@example.org
    """
    app, now = state.app, clock.now()
    preparing("start notification")
    incident = inc.declare(app, now, service=service, severity=severity, impact=impact,
                           summary=summary, impacted=impacted, eta=eta, started=started,
                           next_steps=next_steps, lead=lead, author=author)
    click.echo(incident.ref)
    ids = inc.message_ids(incident, "start")
    if not lead:
        click.echo(f"lead: {incident.lead} (first on call for {incident.service})", err=True)
    click.echo(f"start notification queued for {len(ids)} recipient(s); "
               f"next communication at {incident.next_comm_at:%H:%M} UTC", err=True)
    # Stdout holds only the reference, for `ref=$(mailflow declare …)`.
    if not queue_only:
        deliver(app, now, "start notification", ids, incident, err=True)


@cli.command()
@pass_state
def tick(state: State) -> None:
    """Do what is due now (reminders, updates, escalations), send the outbox, exit.

    \b
    Example:
      MAILFLOW_NOW=2026-11-24T11:00:00Z mailflow tick
    """
    from . import scheduler

    report = scheduler.tick(state.app, clock.now())
    for line in report.done:
        click.echo(f"done: {line}")
    delivery = report.delivery
    assert delivery is not None  # tick always drains
    click.echo(f"sent {delivery.sent}, retrying {delivery.retrying}, failed {delivery.failed}")
    if report.errors:
        raise MailflowError("; ".join(report.errors))


@cli.command()
@click.argument("ref")
@click.option("--text", default="", help="What is new.")
@click.option("--severity", default=None, help="Change the severity (P0-P3); the cadence follows.")
@click.option("--impact", default=None, help="Change the scope: outage or degraded.")
@click.option("--eta", default=None, help="How long it will last, or what makes it uncertain.")
@click.option("--started", default=None, help="What has been started.")
@click.option("--next-steps", default=None, help="The next debugging steps.")
@click.option("--next-update", default=None, metavar="30m|14:30",
              help="Move the next communication mark: in a duration, or at HH:MM UTC.")
@click.option("--send", is_flag=True, help="Send the update now instead of at the next mark.")
@author_option
@pass_state
def update(state: State, ref: str, text: str, severity: str | None, impact: str | None,
           eta: str | None, started: str | None, next_steps: str | None,
           next_update: str | None, send: bool, author: str) -> None:
    """Add an update or change fields; it goes out at the next mark, or now with --send.

    Every change is logged with its author and shown in orange in the next email.

    \b
    Example:
      mailflow update INC-1 --text "Index is corrupt; rebuilding" --send
      mailflow update INC-1 --severity P2 --impact degraded --eta "2h"
    """
    changes = dict(severity=severity, impact=impact, eta=eta, started=started,
                   next_steps=next_steps)
    if not text.strip() and all(v is None for v in changes.values()) and not next_update \
            and not send:
        raise MailflowError("nothing to do: give --text, a field to change, --next-update "
                            "or --send")
    if next_update:
        check_next_update(next_update)
    app, now = state.app, clock.now()
    incident = inc.get_incident(ref)
    with inc.locked(app, incident):
        # One call, one timeline entry: the text first, the changes on one line.
        action = inc.apply_update(app, incident, now, author, text=text, fields=changes,
                                  next_update=next_update, strict=True)
        if send:
            preparing("update")
        msgs = inc.send_update(app, incident, now) if send else []
        if send and next_update and action.next_comm_at:  # the time given wins over the cadence
            inc.schedule_mark(app, incident, action.next_comm_at, now)
    if send:
        click.echo(f"next communication at {incident.next_comm_at:%H:%M} UTC")
        deliver(app, now, "update", msgs, incident)
    else:
        click.echo(f"recorded; it goes out at {incident.next_comm_at:%H:%M} UTC")


@cli.command()
@click.argument("ref")
@click.option("--steps", required=True, help="The resolution steps (shown in green).")
@click.option("--follow-up", default="", help="Follow-up work still to do (yellow); `close` later.")
@author_option
@pass_state
def resolve(state: State, ref: str, steps: str, follow_up: str, author: str) -> None:
    """Resolve an incident and send the solved notification.

    \b
    Example:
      mailflow resolve INC-1 --steps "Rebuilt the index; restarted app servers"
    """
    app, now = state.app, clock.now()
    incident = inc.get_incident(ref)
    preparing("solved notification")
    solved = inc.resolve(app, incident, now, steps, author, follow_up=follow_up)
    lead = f"; the postmortem draft goes to {incident.lead}" if incident.lead else ""
    click.echo(f"{incident.ref} {incident.status}{lead}")
    deliver(app, now, "solved notification", solved, incident)


@cli.command()
@click.argument("ref")
@click.option("--note", default="", help="What was done for the follow-up.")
@author_option
@pass_state
def close(state: State, ref: str, note: str, author: str) -> None:
    """Close an incident resolved with --follow-up: the final green notice.

    \b
    Example:
      mailflow close INC-1 --note "Replica rebuilt; backups verified"
    """
    app, now = state.app, clock.now()
    incident = inc.get_incident(ref)
    final = inc.close(app, incident, now, author, note)
    click.echo(f"{incident.ref} closed")
    deliver(app, now, "final notice", final, incident)


@cli.command()
@click.argument("ref")
@click.option("--text", default="", help="Why: what is seen again (shown in the update).")
@author_option
@pass_state
def reopen(state: State, ref: str, text: str, author: str) -> None:
    """Reopen a resolved incident: open again with its cadence, and everyone is told.

    \b
    Example:
      mailflow reopen INC-1 --text "Seeing 502s again since 14:10"
    """
    app, now = state.app, clock.now()
    incident = inc.get_incident(ref)
    preparing("update")
    sent = inc.reopen(app, incident, now, author, text=text)
    click.echo(f"{incident.ref} open again; next communication at "
               f"{incident.next_comm_at:%H:%M} UTC")
    deliver(app, now, "update", sent, incident)


@cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--all", "show_all", is_flag=True, help="Include resolved incidents.")
@click.option("--drafts", is_flag=True, help="Include drafts opened by alerts (and dismissed "
                                             "ones with --all).")
@pass_state
def list_(state: State, as_json: bool, show_all: bool, drafts: bool) -> None:
    """List incidents (open ones unless --all).

    \b
    Example:
      mailflow list --all --json
    """
    state.app  # noqa: B018 - opens the database
    rows = [{
        "ref": i.ref, "status": i.status, "severity": i.severity, "impact": i.impact,
        "service": i.service, "summary": i.summary, "lead": i.lead,
        "declared_at": i.declared_at.isoformat().replace("+00:00", "Z"),
        "next_communication_at":
            i.next_comm_at.isoformat().replace("+00:00", "Z") if i.next_comm_at else None,
    } for i in inc.listing(show_all, drafts)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    _inbound_warning(state.app)
    if not rows:
        click.echo("no incidents" if show_all else "no open incidents (--all shows resolved ones)")
    for r in rows:
        nxt = f" next {r['next_communication_at'][11:16]} UTC" if r["next_communication_at"] else ""
        click.echo(f"{r['ref']:<8} {r['status']:<9} {r['severity']} {r['impact']:<8} "
                   f"{r['service']}: {r['summary']}{nxt}")


@cli.command()
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def show(state: State, ref: str, as_json: bool) -> None:
    """Show one incident: fields, recipients with delivery state, and the timeline.

    \b
    Example:
      mailflow show INC-1 --json
    """
    state.app  # noqa: B018
    data = inc.describe(inc.get_incident(ref))
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    _inbound_warning(state.app)
    now = clock.now()
    for line in show_lines(data, now.date(), now):
        click.echo(line)


def _inbound_warning(app: Mailflow) -> None:
    """On stderr, when the replies' mailbox cannot be read ([inbound] mode = "imap")."""
    if app.config.inbound.mode != "imap":
        return
    from .imap import status_line

    line = status_line(app)
    if line:
        click.echo(f"warning: {line}", err=True)


def show_lines(data: dict[str, Any], today: date, now: datetime | None = None) -> list[str]:
    """`mailflow show` for people: times to the minute (UTC), a date on any other day."""
    def utc(iso: str | None) -> str:
        return f"{when(iso, today)} UTC" if iso else ""

    def held(m: dict[str, Any]) -> bool:
        return bool(now and m.get("not_before")
                    and datetime.fromisoformat(m["not_before"].replace("Z", "+00:00")) > now)

    subject = data["subject"]
    lines = [subject if data["ref"] in subject else f"{data['ref']}  {subject}"]
    fields = [("status", data["status"]), ("severity", data["severity"]),
              ("impact", data["impact"]), ("summary", data["summary"]),
              ("lead", data["lead"]), ("communicator", data["communicator"]),
              ("scribe", data["scribe"]),
              ("declared", utc(data["declared_at"])),
              ("next communication", utc(data["next_communication_at"])),
              ("resolved", utc(data["resolved_at"]))]
    lines += [f"  {label:<19} {value}" for label, value in fields if value]
    lines.append("recipients:")
    waiting: dict[tuple[str, str], list[str]] = {}
    for r in data["recipients"]:
        states = ", ".join(f"{m['kind']} held" if held(m) else f"{m['kind']} {m['status']}"
                           for m in r["messages"]) or "nothing yet"
        lines.append(f"  {r['email']:<32} {r['status']:<7} {states}")
        for m in r["messages"]:
            if held(m):
                waiting.setdefault((m["not_before"], m["kind"]), []).append(r["email"])
    if waiting:
        lines.append("held until working hours:")
        for (at, kind), emails in sorted(waiting.items()):
            lines.append(f"  {kind} email to {len(emails)} at {utc(at)}: {', '.join(emails)}")
    lines.append("timeline (UTC):")
    times = [when(e["at"], today) for e in data["timeline"]]
    width = max(map(len, times), default=5)
    for e, at in zip(data["timeline"], times, strict=False):
        who = f" [{e['author']}]" if e["author"] else ""
        head = f"  {at:>{width}} {e['kind']:<10}{who} "
        first, *rest = (e["text"] or "").splitlines() or [""]
        lines.append(head + first)
        # Later lines of a multi-line update stay under the entry, not in the time column.
        lines += [" " * len(head) + line if line.strip() else "" for line in rest]
    return lines


@cli.command()
@click.argument("ref")
@click.option("--kind", type=click.Choice(["start", "update", "solved", "reminder"]),
              default="update", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the HTML here (default: stdout).")
@click.option("--text", "as_text", is_flag=True, help="The plain-text part instead.")
@pass_state
def preview(state: State, ref: str, kind: str, out: Path | None, as_text: bool) -> None:
    """Render what an email would look like now, without sending or changing anything.

    \b
    Example:
      mailflow preview INC-1 --kind update --out update.html
    """
    app, now = state.app, clock.now()
    incident = inc.get_incident(ref)
    extra: dict[str, Any] = {}
    if kind == "solved":
        ended = incident.resolved_at or now
        extra = dict(grade=incident.status if incident.status != "open" else "resolved",
                     resolution=incident.resolution or "(resolution steps)",
                     follow_up=incident.follow_up, ended_at=ended,
                     duration=ended - incident.declared_at)
    ctx = composition.context(app, incident, kind, now, **extra)
    person = Personal(email=incident.lead or "you@example.org",
                      name="", reason="as a preview")
    body = (app.renderer.text(kind, ctx, person) if as_text
            else app.renderer.preview(kind, ctx, person))
    if out is None:
        click.echo(body)
    else:
        out.write_text(body, encoding="utf-8")
        click.echo(f"wrote {out}")


@cli.command()
@click.option("--host", default=None, help="Override [inbound] host.")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="Override [inbound] port (0: any free).")
@click.option("--tick", "tick_seconds", type=click.FloatRange(0.1, 3600), default=5.0,
              show_default=True,
              help="Seconds between scheduler ticks.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@pass_state
def serve(state: State, host: str | None, port: int | None, tick_seconds: float,
          verbose: bool) -> None:
    """Run the daemon: inbound SMTP for replies, reminders, marks, escalations, outbox.

    \b
    Example:
      mailflow --config /etc/mailflow/mailflow.toml serve
    """
    import asyncio
    import logging
    from dataclasses import replace

    from .daemon import Daemon, setup_logging

    setup_logging(logging.DEBUG if verbose else logging.INFO)
    config = load_config(state.config_path)
    inbound = replace(config.inbound, host=host or config.inbound.host,
                      port=config.inbound.port if port is None else port)
    state._app = Mailflow(replace(config, inbound=inbound))
    state.app.contacts  # noqa: B018 - a broken contacts.yaml fails now, not at the first reply
    state.app.renderer.check()
    try:
        code = asyncio.run(Daemon(state.app, tick_seconds=tick_seconds).run())
    except OSError as exc:
        raise MailflowError(f"cannot listen on {inbound.host}:{inbound.port}: {exc}") from None
    sys.exit(code)


@cli.command("parse-reply")
@click.argument("file", type=click.File("rb"))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def parse_reply_cmd(file: Any, as_json: bool) -> None:
    """Show what a reply would post: its text, its commands, auto-reply or bounce.

    \b
    Example:
      mailflow parse-reply reply.eml --json
    """
    from dataclasses import asdict

    from .replies import parse_reply

    reply = parse_reply(file.read())
    data = asdict(reply)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"from:     {reply.sender_name} <{reply.sender}>")
    click.echo(f"subject:  {reply.subject}")
    if reply.is_bounce:
        click.echo(f"BOUNCE ({reply.reason}): {', '.join(reply.bounced_recipients) or '?'}")
    elif reply.is_auto_reply:
        click.echo(f"AUTO-REPLY, never posted ({reply.reason})")
    for command in reply.commands:
        click.echo(f"command:  {command.name}{': ' + command.value if command.value else ''}")
    for refused in reply.refused:
        click.echo(f"refused:  {refused.line} ({refused.reason})")
    for look in reply.lookalikes:
        click.echo(f"HELD:     {look.line} (did you mean `{look.suggestion}`?)")
    click.echo("text:" if reply.text else "text:     (nothing of the sender's own)")
    for line in reply.text.splitlines():
        click.echo(f"  {line}")


@cli.command()
@click.argument("ref")
@click.option("--lead", default=None, metavar="EMAIL")
@click.option("--communicator", default=None, metavar="EMAIL")
@click.option("--scribe", default=None, metavar="EMAIL")
@author_option
@pass_state
def assign(state: State, ref: str, lead: str | None, communicator: str | None,
           scribe: str | None, author: str) -> None:
    """Give the lead, communicator or scribe role; a new lead restarts the handover clock.

    \b
    Example:
      mailflow assign INC-1 --lead bob@example.org --scribe chloe@example.org
    """
    if not (lead or communicator or scribe):
        raise MailflowError("name a role: --lead, --communicator or --scribe")
    app, now = state.app, clock.now()
    incident = inc.get_incident(ref)
    inc.assign(app, incident, now, author, lead=lead, communicator=communicator, scribe=scribe)
    click.echo(f"{incident.ref}: lead {incident.lead or '-'}, communicator "
               f"{incident.communicator or '-'}, scribe {incident.scribe or '-'}")


@cli.command("add-recipient")
@click.argument("ref")
@click.argument("emails", nargs=-1, required=True)
@author_option
@pass_state
def add_recipient(state: State, ref: str, emails: tuple[str, ...], author: str) -> None:
    """Add impacted people to an incident's emails, from the next one on.

    \b
    Example:
      mailflow add-recipient INC-1 dean@example.org
    """
    app, now = state.app, clock.now()
    incident = inc.get_incident(ref)
    with inc.locked(app, incident):
        for email in emails:
            inc.add_impacted(app, incident, email, now, author)
    click.echo(f"{incident.ref}: {len(emails)} added; they receive the next email")


@cli.command()
@click.argument("ref")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the Markdown here (default: stdout).")
@click.option("--done", is_flag=True, help="Mark the postmortem as written: no more reminders.")
@author_option
@pass_state
def postmortem(state: State, ref: str, out: Path | None, done: bool, author: str) -> None:
    """Write the postmortem draft of a resolved incident, or mark it done.

    \b
    Example:
      mailflow postmortem INC-1 --out INC-1-postmortem.md
      mailflow postmortem INC-1 --done
    """
    from .postmortem import draft

    app, now = state.app, clock.now()
    incident = inc.get_incident(ref)
    if done:
        inc.mark_postmortem_done(app, incident, now, author)
        click.echo(f"{incident.ref}: postmortem marked done")
        return
    text = draft(app, incident, now)
    if out is None:
        click.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
        click.echo(f"wrote {out}")


cli.add_command(contacts)


def _register_alerts() -> None:
    from .alerts_cli import alert, publish, subscribers
    cli.add_command(alert)
    cli.add_command(publish)
    cli.add_command(subscribers)


_register_alerts()


def _register_status() -> None:
    from .ha_cli import status
    cli.add_command(status)


_register_status()


def _register_oauth2() -> None:
    from .oauth2_cli import oauth2_group
    cli.add_command(oauth2_group)


_register_oauth2()


def main() -> None:
    """Entry point of the `mailflow` script."""
    try:
        cli(prog_name="mailflow")  # click exits through SystemExit, even on success
    finally:
        flush_or_quit()


def flush_or_quit() -> None:
    """Flush stdout now, so that a reader that left (`| head`) is noticed here, not at exit."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        quit_quietly()


def quit_quietly() -> None:
    """The reader of our output went away: exit 1 without a word, as other Unix tools do."""
    # Python would otherwise complain when it flushes stdout once more at exit.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    sys.exit(1)


if __name__ == "__main__":
    main()
