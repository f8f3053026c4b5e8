"""`mailflow alert` (for Nagios, Zabbix or any script) and `mailflow publish`: thin wrappers."""

from __future__ import annotations

import os
from typing import Any

import click

from . import alerts, clock

# Not importing cli.py (it registers these commands): the State it puts in ctx.obj is used
# through `.app` only.
pass_state = click.pass_obj


@click.command()
@click.option("--service", required=True, help="Service key in contacts.yaml.")
@click.option("--summary", required=True, help="What fired, in one line.")
@click.option("--severity", default="", help="P0–P3, or critical/warning/info (default P2).")
@click.option("--impact", default="", help="outage or degraded (default degraded).")
@click.option("--key", default="", help="What makes this alert the same as an earlier one "
                                        "(default: service + summary).")
@click.option("--resolved", is_flag=True, help="The alert has cleared.")
@pass_state
def alert(state: Any, service: str, summary: str, severity: str, impact: str, key: str,
          resolved: bool) -> None:
    """Open (or update) a draft incident from an alert; the on-call person is asked at once.

    \b
    Example: a Nagios notification command, and its recovery
      mailflow alert --service learn --key "$HOSTNAME$/$SERVICEDESC$" \\
        --severity critical --summary "$SERVICEDESC$ is $SERVICESTATE$"
      mailflow alert --service learn --key "$HOSTNAME$/$SERVICEDESC$" --summary ok --resolved
    """
    app = state.app
    now = clock.now()
    intake = alerts.receive(app, alerts.from_cli(service, summary, severity, key, resolved,
                                                 impact), now)
    report = app.deliver_now(now)
    waiting = f"; {app.outbox.pending()} waiting in the outbox" if report.retrying else ""
    click.echo(f"{intake.line}; {report.sent} email(s) sent{waiting}")


@click.command()
@click.argument("ref")
@click.option("--text", default="", help="Publish these words instead of the internal text.")
@click.option("--author", default=lambda: os.environ.get("MAILFLOW_USER")
              or os.environ.get("USER") or "cli", show_default="$MAILFLOW_USER",
              help="Who is publishing (recorded in the timeline).")
@pass_state
def publish(state: Any, ref: str, text: str, author: str) -> None:
    """Publish an incident's latest communication on the external status page.

    \b
    Example:
      mailflow publish INC-7
      mailflow publish INC-7 --text "Logins are slow; we are on it"
    """
    from . import incidents as inc
    from . import statuspage

    app = state.app
    now = clock.now()
    incident = inc.get_incident(ref)
    with inc.locked(app, incident):
        update = statuspage.publish(app, incident, now, author, text)
    report = app.deliver_now(now)  # the subscribers' emails (and the page, written first)
    where = app.config.status.dir or "nowhere: set [status] dir"
    click.echo(f"{incident.ref} published: {update.public_text} (status page in {where}); "
               f"{report.sent} email(s) sent to subscribers")


@click.group(invoke_without_command=True)
@click.option("--service", default="", help="Only this service's subscribers.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def subscribers(ctx: click.Context, service: str, as_json: bool) -> None:
    """List the email subscribers of the services' public status updates.

    \b
    Example:
      mailflow subscribers
      mailflow subscribers --service learn --json
      mailflow subscribers import learn addresses.txt
    """
    if ctx.invoked_subcommand is not None:
        return
    import json

    from . import subscribers as subs

    _ = ctx.obj.app  # opens (and migrates) the database
    rows = [{"email": s.email, "service": s.service, "status": s.status,
             "requested_at": s.requested_at.isoformat(),
             "confirmed_at": s.confirmed_at.isoformat() if s.confirmed_at else None,
             "unsubscribed_at": s.unsubscribed_at.isoformat() if s.unsubscribed_at else None}
            for s in subs.listing(service or None)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no subscribers (people subscribe by writing `subscribe SERVICE` to the "
                   "base address)")
    for r in rows:
        since = r["unsubscribed_at"] if r["status"] == "unsubscribed" else \
            r["confirmed_at"] or r["requested_at"]
        click.echo(f"{r['service']:<12} {r['status']:<13} {r['email']}  (since {since[:16]})")


@subscribers.command("import")
@click.argument("service")
@click.argument("file", type=click.File("r", encoding="utf-8"))
@pass_state
def import_(state: Any, service: str, file: Any) -> None:
    """Add an existing list (one address a line) as confirmed subscribers of SERVICE.

    Addresses that unsubscribed are skipped: only their own new confirmation brings
    them back.

    \b
    Example:
      mailflow subscribers import learn addresses.txt
    """
    from . import subscribers as subs

    added, skipped = subs.import_addresses(state.app, service, file.read().splitlines(),
                                           clock.now())
    click.echo(f"{added} subscriber(s) added to {service}"
               + (f"; {len(skipped)} skipped (they unsubscribed): {', '.join(skipped)}"
                  if skipped else ""))
