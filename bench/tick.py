"""Scheduler tick benchmark: does an idle tick stay flat as the database grows?

    python bench/tick.py [--sizes 100,10000,100000] [--idle-repeat 200] [--due-repeat 30]

For each size N a fresh temp project is filled (bulk inserts, untimed) with N incidents:
10 % open, each with five pending Due rows in the future (reminder, mark, two escalations,
handover); 90 % resolved, their five Due rows all done (done, skipped or cancelled). That is
5·N Due rows, 0.5·N of them pending. Then, with every tick at the same `now`:

* idle tick:  `scheduler.run_due(app, now)` when nothing is due (the daemon does this every
              few seconds, all day); repeated --idle-repeat times after a short warm-up.
* 1-due tick: the handover of one open incident (its lead set) is moved to just before `now`
              (untimed), then `run_due(app, now)` claims it, renders and queues one handover
              email and logs it, in one transaction; repeated --due-repeat times, taking the
              open incidents in turn (re-armed when a small database has fewer of them).

All sizes are built first (the build time is printed), then the timed ticks are taken in 10
rounds that alternate between the sizes, so a busy moment of the machine hits every size alike.

Printed per size: the median (and 90th percentile) per idle tick (µs) and per 1-due tick (ms);
then the ratio largest/smallest size for both. Read the ratios as "how much more a tick costs
on the big database": ≈ 1 (say below 1.5) is the goal, since the due query is an index lookup
on Due(done_at, due_at) whose cost grows with log N at most. A ratio that grows with N means a
table scan (without that index, 10,000 incidents already make the idle tick ~15x slower than
100). The 1-due tick is dominated by rendering the email (CSS inlining) and the fsynced commit,
so it is noisier. The `EXPLAIN QUERY PLAN` of the exact SQL that `due_work` runs is printed to
show which index it uses. Exit status 1 if a tick did not do what it should (the idle tick did
something, the 1-due tick did not do exactly one handover) or if the plan reads the Due table
without an index.

The database is a real SQLite file (WAL, synchronous=FULL, as in production) in a temp folder;
outgoing mail goes to a Maildir there. Not a test: run by hand from the repository root.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from mailflow.app import Mailflow
from mailflow.config import load_config
from mailflow.incidents import threshold_label
from mailflow.models import MODELS, Due, Incident
from mailflow.scheduler import due_work, run_due
from mailflow.testing import write_config

NOW = datetime(2026, 11, 24, 10, 0, tzinfo=timezone.utc)  # `now` of every timed tick
CHUNK = 500  # rows per INSERT statement
ROUNDS = 10  # the timed ticks are taken in this many rounds, alternating between sizes
LEADS = ("ana@example.org", "bob@example.org", "chloe@example.org")



def make_app(folder: Path) -> Mailflow:
    """A temp project: config (mail to a Maildir), contacts, an empty database."""
    config = write_config(folder, None)  # mail to the Maildir; the tests' directory
    return Mailflow(load_config(config))


def escalations(app: Mailflow, severity: str) -> tuple[timedelta, ...]:
    """The escalation thresholds of a severity (one list for all, or one per severity)."""
    escalate: Any = app.config.cadence.escalate
    return tuple(escalate[severity] if isinstance(escalate, dict) else escalate)


def _seconds(delta: timedelta) -> timedelta:
    return timedelta(seconds=int(delta.total_seconds()))


def incident_rows(app: Mailflow, first_id: int, count: int, rng: random.Random
                  ) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """(incident row, its five Due rows) for ids first_id .. first_id+count-1; every 10th open."""
    cad = app.config.cadence
    every = cad.update_every["P1"]
    thresholds = escalations(app, "P1")
    for iid in range(first_id, first_id + count):
        is_open = iid % 10 == 1  # ids 1, 11, 21...: 10 %, spread over the table
        if is_open:
            # Declared in the last 3 h; the next mark 15–60 min ahead: nothing due at NOW.
            declared = NOW - timedelta(minutes=rng.randint(5, 170))
            mark = NOW + timedelta(minutes=rng.randint(15, 60))
            resolved = None
        else:
            declared = NOW - _seconds(timedelta(days=rng.uniform(1, 365)))
            resolved = declared + _seconds(timedelta(minutes=rng.randint(30, 360)))
            mark = declared + every
        lead = LEADS[iid % len(LEADS)]
        incident = {
            "id": iid, "service": "learn", "service_title": "ISC Learn Platform",
            "subject": f"[INC-{iid}] ISC Learn Platform: outage", "severity": "P1",
            "impact": "outage", "summary": f"Learn platform returns 502 (case {iid})",
            "impacted": [], "eta": "", "started": "", "next_steps": "",
            "lead": lead, "lead_since": declared, "communicator": None, "scribe": None,
            "status": "open" if is_open else "resolved", "declared_at": declared,
            "resolved_at": resolved, "closed_at": None, "next_comm_at": mark,
            "last_comm_at": declared, "last_sent": None, "resolution": "" if is_open else
            "Rebuilt the sessions index", "follow_up": "", "postmortem_done": False,
        }
        work = [("reminder", mark.isoformat(), mark - cad.reminder_before),
                ("mark", mark.isoformat(), mark)]
        work += [("escalate", threshold_label(t), declared + t) for t in thresholds]
        work.append(("handover", f"{lead}@{declared.isoformat()}", declared + cad.handover_after))
        due = []
        for kind, key, at in work:
            if resolved is None:
                done_at, outcome = None, ""
            elif at <= resolved:
                done_at, outcome = at, "done" if kind != "reminder" else "skipped"
            else:
                done_at, outcome = resolved, "cancelled"
            due.append({"incident": iid, "kind": kind, "key": key, "due_at": at,
                        "done_at": done_at, "outcome": outcome})
        yield incident, due


def build(app: Mailflow, n: int) -> list[int]:
    """Fill the database with n incidents in bulk; returns the ids of the open ones."""
    rng = random.Random(n)
    open_ids: list[int] = []
    with app.db.atomic():
        for first in range(1, n + 1, CHUNK):
            rows = list(incident_rows(app, first, min(CHUNK, n + 1 - first), rng))
            Incident.insert_many([r for r, _ in rows]).execute()
            due = [d for _, ds in rows for d in ds]
            for i in range(0, len(due), CHUNK):
                Due.insert_many(due[i:i + CHUNK]).execute()
            open_ids += [r["id"] for r, _ in rows if r["status"] == "open"]
    return open_ids


def query_plan(app: Mailflow) -> tuple[str, list[str]]:
    """The SQL `due_work` really runs, and SQLite's plan for it."""
    captured: list[tuple[str, Any]] = []
    original = app.db.execute_sql

    def spy(sql: str, params: Any = None, *args: Any, **kwargs: Any) -> Any:
        captured.append((sql, params))
        return original(sql, params, *args, **kwargs)

    app.db.execute_sql = spy  # type: ignore[method-assign]
    try:
        due_work(NOW)
    finally:
        del app.db.execute_sql  # back to the class method
    sql, params = captured[-1]
    rows = app.db.execute_sql("EXPLAIN QUERY PLAN " + sql, params).fetchall()
    depth = {0: -1}
    lines = []
    for node, parent, _unused, detail in rows:
        depth[node] = depth.get(parent, -1) + 1
        lines.append("  " * depth[node] + detail)
    return sql, lines


@dataclass
class Size:
    """One database size: its project, what was built, and the samples (µs) so far."""

    n: int
    app: Mailflow
    open_ids: list[int]
    build_s: float
    due_rows: int
    pending: int
    mib: float
    idle: list[float] = field(default_factory=list)
    one: list[float] = field(default_factory=list)
    turn: int = 0  # which open incident gets the next handover

    def use(self) -> None:
        """Point the models at this size's database (they are bound to one at a time)."""
        self.app.db.bind(MODELS, bind_refs=False, bind_backrefs=False)


def prepare(n: int, folder: Path) -> Size:
    """Build a project with n incidents; returns it with its figures."""
    app = make_app(folder)
    t0 = time.perf_counter()
    open_ids = build(app, n)
    build_s = time.perf_counter() - t0
    db = app.config.database
    mib = sum(p.stat().st_size for p in db.parent.glob(db.name + "*")) / 2**20
    return Size(n, app, open_ids, build_s, Due.select().count(),
                Due.select().where(Due.done_at.is_null()).count(), mib)


def idle_ticks(size: Size, repeat: int, keep: bool = True) -> None:
    """run_due when nothing is due; µs per tick into size.idle."""
    size.use()
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        report = run_due(size.app, NOW)
        elapsed = (time.perf_counter_ns() - t0) / 1000
        if report.done or report.skipped or report.errors:
            raise SystemExit(f"{size.n} incidents: the idle tick did something: {report}")
        if keep:
            size.idle.append(elapsed)


def one_due_ticks(size: Size, repeat: int, spread: int, keep: bool = True) -> None:
    """run_due when exactly one handover is due; µs per tick into size.one.

    The open incidents take turns (spread over the table); on a small database an incident
    gets its handover re-armed when its turn comes again.
    """
    size.use()
    step = max(1, len(size.open_ids) // spread)
    for _ in range(repeat):
        iid = size.open_ids[(size.turn * step) % len(size.open_ids)]
        size.turn += 1
        Due.update(due_at=NOW - timedelta(minutes=1), done_at=None, outcome="").where(
            (Due.incident == iid) & (Due.kind == "handover")).execute()
        t0 = time.perf_counter_ns()
        report = run_due(size.app, NOW)
        elapsed = (time.perf_counter_ns() - t0) / 1000
        if len(report.done) != 1 or not report.done[0].startswith("handover ") \
                or report.skipped or report.errors:
            raise SystemExit(f"{size.n} incidents: the 1-due tick on INC-{iid} did not do "
                             f"exactly one handover: {report}")
        if keep:
            size.one.append(elapsed)


def p90(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=10)[-1] if len(samples) > 1 else samples[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,10000,100000",
                        help="incident counts, comma-separated (default: 100,10000,100000)")
    parser.add_argument("--idle-repeat", type=int, default=200, help="idle ticks per size")
    parser.add_argument("--due-repeat", type=int, default=30, help="1-due ticks per size")
    args = parser.parse_args()
    try:
        sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    except ValueError:
        parser.error("--sizes: comma-separated integers, e.g. 100,10000,100000")
    if not sizes or sizes[0] < 10 or args.idle_repeat < ROUNDS or args.due_repeat < ROUNDS:
        parser.error(f"sizes must be >= 10 (10 % are open); repeats >= {ROUNDS}")

    print(f"tick: sizes {', '.join(map(str, sizes))} incidents (10 % open), "
          f"{args.idle_repeat} idle / {args.due_repeat} 1-due ticks per size, "
          f"python {sys.version.split()[0]}")
    failed = False
    with contextlib.ExitStack() as stack:
        built: list[Size] = []
        for n in sizes:
            folder = Path(stack.enter_context(
                tempfile.TemporaryDirectory(prefix="mailflow-bench-tick-")))
            size = prepare(n, folder)
            stack.callback(size.app.close)
            built.append(size)
            print(f"  built {n:>7} incidents in {size.build_s:5.1f} s: {size.due_rows:>6} Due "
                  f"rows ({size.pending} pending), {size.mib:.1f} MiB", flush=True)
        built[-1].use()
        sql, plan = query_plan(built[-1].app)
        for size in built:  # warm-up: caches, the renderer, the templates
            idle_ticks(size, 10, keep=False)
            one_due_ticks(size, 1, args.due_repeat + 1, keep=False)
        # Interleaved rounds: a slow moment of the machine hits every size alike.
        for r in range(ROUNDS):
            for size in built:
                idle_ticks(size, args.idle_repeat * (r + 1) // ROUNDS
                           - args.idle_repeat * r // ROUNDS)
                one_due_ticks(size, args.due_repeat * (r + 1) // ROUNDS
                              - args.due_repeat * r // ROUNDS, args.due_repeat + 1)

    med = statistics.median
    print("median per tick (p90):")
    for size in built:
        print(f"  {size.n:>7} incidents: idle tick {med(size.idle):7.1f} µs "
              f"({p90(size.idle):7.1f}) | 1-due tick {med(size.one) / 1000:6.2f} ms "
              f"({p90(size.one) / 1000:6.2f})")
    small, large = built[0], built[-1]
    factor = large.n // small.n
    print(f"ratio {large.n}/{small.n} incidents ({factor}x the rows):")
    print(f"  idle tick  : {med(large.idle) / med(small.idle):6.2f}  (goal ≈ 1; a table scan "
          "grows with the rows)")
    print(f"  1-due tick : {med(large.one) / med(small.one):6.2f}  (goal ≈ 1; mostly rendering "
          "and the fsynced commit)")
    print(f"EXPLAIN QUERY PLAN of due_work at {large.n} incidents:")
    print(f"  {sql}")
    for line in plan:
        print(f"    {line}")
    indexed = any("USING INDEX" in line or "USING COVERING INDEX" in line for line in plan)
    if not indexed or any("SCAN" in line and "INDEX" not in line for line in plan):
        print("  -> NO index on Due is used: every tick reads the whole table")
        failed = True
    else:
        sort = any("TEMP B-TREE" in line for line in plan)
        print("  -> index lookup" + (" plus a sort" if sort else ", already in order (no sort)"))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
