"""CLI start-up benchmark: how long `mailflow list` and `show` take, against a bare import.

    python bench/startup.py [--repeat 9]

A fresh temp project (`mailflow init`, one incident declared into the Maildir) is made
first, untimed. Then, alternating so that machine noise hits all alike, each command is run
--repeat times as a new process and timed from spawn to exit:

* baseline: `python -c "import click, peewee"`: the two libraries every command needs;
* `mailflow list` and `mailflow show INC-1` (read-only commands people run all day).

Bytecode: an installed mailflow has its `.pyc` files (pip writes them), while a source
checkout run with PYTHONDONTWRITEBYTECODE=1 compiles every module on every start (~40 ms).
So every process here, the baseline's too, runs with its bytecode cached in a temp folder
(PYTHONPYCACHEPREFIX), written by one untimed warm-up run of each command; `--no-bytecode`
measures the other case.

Printed: min/median/max seconds per command and the ratio of the medians to the
baseline's. The target is a ratio of at most 2: a read-only command should not pay for
Jinja2, premailer, asyncio, aiosmtplib or ruamel, which only sending and editing need.
Not a test: run by hand from the repository root with the project's virtualenv.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MAILFLOW = str(Path(sys.executable).with_name("mailflow"))


def timed(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--no-bytecode", action="store_true",
                        help="Compile every module on every start, as PYTHONDONTWRITEBYTECODE=1 "
                             "does for a source checkout.")
    args = parser.parse_args()
    env = {**os.environ, "MAILFLOW_NOW": "2026-11-24T10:00:00Z"}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "project"
        folder.mkdir()
        if args.no_bytecode:
            env["PYTHONDONTWRITEBYTECODE"] = "1"
            env.pop("PYTHONPYCACHEPREFIX", None)
        else:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")
        subprocess.run([MAILFLOW, "init"], cwd=folder, env=env, check=True,
                       stdout=subprocess.DEVNULL)
        subprocess.run([MAILFLOW, "declare", "--service", "learn", "--severity", "P1",
                        "--impact", "outage", "--summary", "Learn returns 502",
                        "--lead", "ana@example.org"], cwd=folder, env=env, check=True,
                       stdout=subprocess.DEVNULL)
        commands = {
            "baseline": [sys.executable, "-c", "import click, peewee"],
            "list": [MAILFLOW, "list"],
            "show": [MAILFLOW, "show", "INC-1"],
        }
        for argv in commands.values():  # warm-up: writes the bytecode cache
            timed(argv, folder, env)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeat):
            for name, argv in commands.items():
                times[name].append(timed(argv, folder, env))
    print(f"startup: {args.repeat} runs each, bytecode "
          f"{'off (compiled on every start)' if args.no_bytecode else 'cached'}, "
          f"python {sys.version.split()[0]}")
    base = statistics.median(times["baseline"])
    worst = 0.0
    for name, values in times.items():
        med = statistics.median(values)
        ratio = med / base
        worst = max(worst, ratio if name != "baseline" else 0.0)
        print(f"{name:9} min {min(values) * 1000:6.1f} ms  median {med * 1000:6.1f} ms  "
              f"max {max(values) * 1000:6.1f} ms  ratio {ratio:4.2f}")
    print(f"worst ratio command/baseline: {worst:.2f} (target <= 2.0)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
