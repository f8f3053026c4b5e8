"""`mailflow status`: the daemons on this database, who schedules, and what is waiting."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import click

from . import clock

# Not importing cli.py (it registers this command): its State is used through `.app` only.
pass_state = click.pass_obj


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def status(state: Any, as_json: bool) -> None:
    """Show the running instances (host, pid, version, heartbeat), the scheduler, the queue.

    \b
    Example:
      mailflow status
    """
    from .ha import status as read_status

    report = read_status(state.app, clock.now())
    if as_json:
        click.echo(json.dumps(asdict(report), indent=2))
        return
    click.echo(f"instances: {len(report.instances) or 'none running'}")
    for i in report.instances:
        role = "  scheduler" if i["scheduler"] else ""
        click.echo(f"  {i['host']} pid {i['pid']} version {i['version']} "
                   f"heartbeat {i['heartbeat_age']}s ago{role}")
    holder = report.scheduler
    click.echo("scheduler: " + (f"{holder['host']} pid {holder['pid']}" if holder
                                else "nobody (no instance holds the scheduler lock)"))
    click.echo(f"outbox: {report.queue['queued']} queued, {report.queue['sending']} sending; "
               f"due work: {report.due}")
