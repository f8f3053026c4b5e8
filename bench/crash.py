"""Crash safety under load: replies and a fan-out while the daemon is kill -9ed.

Run by hand: `python bench/crash.py [--runs 3] [--senders 8] [--replies 100]
[--recipients 500] [--crashes 5]`. One line a run: replies sent / acknowledged (250) /
found in the timeline; emails queued / delivered to the sink / duplicated / missing;
crashes. "OK" means every acknowledged reply is in the timeline exactly once, every
queued email reached the sink, and no more duplicates than one per connection per crash
(`[outbound] concurrency`, 2 by default: each connection may have one email in flight).

`--postgresql` runs the high-availability drill instead, on a throw-away PostgreSQL
(tests/postgres.py; needs Debian's `postgresql` binaries and `pip install -e '.[postgresql]'`):
two daemons on one database, replies spread over both, each crash kills one of them, the
database server is restarted once mid-way (replies in the gap get 4xx and are retried),
and the incident's 4 h escalation falls due amid the kills. Its "OK" also needs exactly
one escalation, all of its emails delivered, and allows one more duplicate per daemon and
connection for the restart. E.g. `python bench/crash.py --postgresql --senders 4
--replies 100 --recipients 500 --crashes 3`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from mailflow.testing import Sink, run_crash_scenario, write_config


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--senders", type=int, default=8)
    parser.add_argument("--replies", type=int, default=100, help="replies per sender")
    parser.add_argument("--recipients", type=int, default=500)
    parser.add_argument("--crashes", type=int, default=5)
    parser.add_argument("--postgresql", action="store_true",
                        help="two daemons on a throw-away PostgreSQL, restarted once mid-way")
    args = parser.parse_args()
    pg: Any = None
    if args.postgresql:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from tests.postgres import Postgres

        pg = Postgres()
        pg.start()
    broken = 0
    try:
        for run in range(args.runs):
            with tempfile.TemporaryDirectory() as tmp, Sink() as sink:
                folder = Path(tmp)
                if pg is None:
                    config = write_config(folder, sink.port)
                    report = run_crash_scenario(
                        folder, config, sink, senders=args.senders, replies_each=args.replies,
                        recipients=args.recipients, crashes=args.crashes, seed=run)
                    ok = report.ok
                else:
                    def restart() -> None:
                        pg.stop("fast")  # every connection is cut, as in a failover
                        pg.start()

                    config = write_config(folder, sink.port, database=pg.fresh())
                    report = run_crash_scenario(
                        folder, config, sink, senders=args.senders, replies_each=args.replies,
                        recipients=args.recipients, crashes=args.crashes, seed=run, daemons=2,
                        outage=restart, escalation_due=True)
                    ok = (report.ok and report.escalations == 1
                          and report.escalation_emails_delivered == report.escalation_emails)
                print(f"run {run + 1}: {report.line()}{'' if ok else ' (drill FAILED)'}",
                      flush=True)
                broken += not ok
    finally:
        if pg is not None:
            pg.close()
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
