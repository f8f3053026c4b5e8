"""`mailflow alert` (for Nagios, Zabbix or any script) and `mailflow publish`: thin wrappers."""

from __future__ import annotations

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
