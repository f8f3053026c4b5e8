"""Crash safety under load: replies and a fan-out while the daemon is kill -9ed.

Run by hand: `python bench/crash.py [--runs 3] [--senders 8] [--replies 100]
[--recipients 500] [--crashes 5]`. One line a run: replies sent / acknowledged (250) /
found in the timeline; emails queued / delivered to the sink / duplicated / missing;
crashes. "OK" means every acknowledged reply is in the timeline exactly once, every
queued email reached the sink, and no more duplicates than one per connection per crash
(`[outbound] concurrency`, 2 by default: each connection may have one email in flight).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from mailflow.testing import Sink, run_crash_scenario, write_config


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--senders", type=int, default=8)
    parser.add_argument("--replies", type=int, default=100, help="replies per sender")
    parser.add_argument("--recipients", type=int, default=500)
    parser.add_argument("--crashes", type=int, default=5)
    args = parser.parse_args()
    broken = 0
    for run in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp, Sink() as sink:
            folder = Path(tmp)
            config = write_config(folder, sink.port)
            report = run_crash_scenario(folder, config, sink, senders=args.senders,
                                        replies_each=args.replies, recipients=args.recipients,
                                        crashes=args.crashes, seed=run)
            print(f"run {run + 1}: {report.line()}", flush=True)
            broken += not report.ok
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
