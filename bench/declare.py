"""Declare benchmark: render+queue of a start email against an update's, same N recipients.

    python bench/declare.py [--recipients 1000] [--repeat 5] [--count-at 10000]

Per repeat, in a fresh temp project whose service notifies a list of N people (names, half
with time zones; the same directory as bench/fanout.py):

* start:  TIMED `incidents.declare`: validate, create the incident, add the N recipients,
          schedule its marks, render the start email once, personalise N copies, queue them;
* update: on that incident, TIMED `post_update` + `send_update`: render the update once,
          personalise N copies, queue them (the baseline: what every later email costs).

Nothing is delivered (the outbox is only filled). Printed: min/median/max seconds of each,
the SQL statements each ran, and the ratio of the start's median to the update's (target at
most 1.5: declaring should cost about what any other email to the same people costs). Then
the statements a declaration to --count-at recipients runs (adding recipients one by one
took three statements each). Exit status 1 if a phase queued the wrong number of emails.
Not a test: run by hand from the repository root; writes only to a temp folder.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import peewee
from fanout import T0, T1, contacts_yaml

from mailflow import incidents as inc
from mailflow.app import Mailflow
from mailflow.config import load_config
from mailflow.contacts import Contacts, parse_contacts
from mailflow.models import OutMessage
from mailflow.render import inline_css


def project(folder: Path, contacts_text: str) -> Path:
    """mailflow.toml (no relay: mail would go to a Maildir) + contacts.yaml."""
    (folder / "contacts.yaml").write_text(contacts_text, encoding="utf-8")
    path = folder / "mailflow.toml"
    path.write_text('database = "state/mailflow.db"\ncontacts = "contacts.yaml"\n'
                    'from = "Incident Desk <incidents@example.org>"\n'
                    'reply_to = "incidents@example.org"\nsecret = "bench-secret-0123456789"\n',
                    encoding="utf-8")
    return path


class _Counting:
    """A cursor whose executemany calls (one statement for many rows) are counted too."""

    def __init__(self, cursor: Any, box: list[int]) -> None:
        self._cursor, self._box = cursor, box
        # Bound once: peewee reads rows one fetchone at a time, so no lookup per row.
        self.execute, self.fetchone = cursor.execute, cursor.fetchone

    def executemany(self, *a: Any, **k: Any) -> Any:
        self._box[0] += 1
        return self._cursor.executemany(*a, **k)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


@contextmanager
def counted() -> Iterator[list[int]]:
    """Count the SQL statements peewee sends (execute_sql and cursor executemany calls)."""
    box = [0]
    real, real_cursor = peewee.SqliteDatabase.execute_sql, peewee.SqliteDatabase.cursor

    def execute_sql(self: Any, *a: Any, **k: Any) -> Any:
        box[0] += 1
        return real(self, *a, **k)

    def cursor(self: Any, *a: Any, **k: Any) -> Any:
        return _Counting(real_cursor(self, *a, **k), box)

    peewee.SqliteDatabase.execute_sql = execute_sql  # type: ignore[method-assign]
    peewee.SqliteDatabase.cursor = cursor  # type: ignore[method-assign]
    try:
        yield box
    finally:
        peewee.SqliteDatabase.execute_sql = real  # type: ignore[method-assign]
        peewee.SqliteDatabase.cursor = real_cursor  # type: ignore[method-assign]


def one_run(folder: Path, contacts_text: str, contacts: Contacts, n: int) -> tuple[float, int,
                                                                                   float, int]:
    """(start seconds, start statements, update seconds, update statements)."""
    app = Mailflow(load_config(project(folder, contacts_text)), contacts=contacts)
    try:
        # Templates compiled and premailer imported before either clock starts: whichever
        # email came first would pay them alone.
        app.renderer.check()
        inline_css("<p>warm-up</p>")
        with counted() as start_sql:
            t = time.perf_counter()
            incident = inc.declare(app, T0, service="learn", severity="P1", impact="outage",
                                   summary="Learn platform returns 502 on every course page",
                                   eta="unknown", started="Restarting the DB primary",
                                   next_steps="Check replication lag", author="ana@example.org")
            start_s = time.perf_counter() - t
        with counted() as update_sql:
            t = time.perf_counter()
            inc.post_update(app, incident, "Primary restored from the 09:00 backup.",
                            author="ana@example.org", now=T1)
            queued = inc.send_update(app, incident, T1)
            update_s = time.perf_counter() - t
        starts = OutMessage.select().where(OutMessage.kind == "start").count()
        if starts != n or len(queued) != n:
            print(f"FAIL: queued {starts} start and {len(queued)} update emails, expected {n}",
                  file=sys.stderr)
            sys.exit(1)
        # The outbox's own connections also write (untimed, not counted here).
        return start_s, start_sql[0], update_s, update_sql[0]
    finally:
        app.close()


def spread(values: list[float]) -> str:
    return (f"min {min(values) * 1e3:7.1f} ms  median {statistics.median(values) * 1e3:7.1f} ms"
            f"  max {max(values) * 1e3:7.1f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipients", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--count-at", type=int, default=10_000,
                        help="also count the statements of one declaration to this many "
                             "recipients (0: skip)")
    args = parser.parse_args()
    n = args.recipients
    text = contacts_yaml(n)
    contacts = parse_contacts(text, "bench-contacts.yaml")
    print(f"declare: {n} recipients, {args.repeat} runs, python {sys.version.split()[0]}")
    starts, updates, ratios = [], [], []
    for rep in range(1, args.repeat + 1):
        with tempfile.TemporaryDirectory(prefix="mailflow-bench-") as tmp:
            s, s_sql, u, u_sql = one_run(Path(tmp), text, contacts, n)
        starts.append(s)
        updates.append(u)
        ratios.append(s / u)
        print(f"  run {rep}: start {s * 1e3:7.1f} ms ({s_sql} statements) | update "
              f"{u * 1e3:7.1f} ms ({u_sql} statements) | ratio {s / u:.2f}")
    print(f"start  (declare: recipients + render + queue): {spread(starts)}")
    print(f"update (post_update + send_update)           : {spread(updates)}")
    ratio = statistics.median(starts) / statistics.median(updates)
    print(f"ratio start/update (medians): {ratio:.2f} (target <= 1.5)")
    if args.count_at:
        big = contacts_yaml(args.count_at)
        with tempfile.TemporaryDirectory(prefix="mailflow-bench-") as tmp:
            _, s_sql, _, _ = one_run(Path(tmp), big, parse_contacts(big, "big.yaml"),
                                     args.count_at)
        print(f"statements of one declaration to {args.count_at} recipients: {s_sql} "
              f"({s_sql / args.count_at:.2f} per recipient)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
