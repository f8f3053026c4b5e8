"""Reply extraction benchmark: what the quote and signature rules cost per reply.

    python bench/quotes.py [--repeat 5]

Two workloads, each timed --repeat times (min / median / max printed):

* fixtures: `extract_text` over every body fixture in tests/fixtures/replies/ (real-looking
  replies in 35+ languages), reported per reply in µs;
* hostile: bodies built to hit every rule at once at the 100,000-character cap (lines that
  all start with "On" and end in a verb, glued leads, label lines, sign-offs, long lines),
  reported per body in ms. Linear rules keep each well under a second.

The baseline, in the same run, is the naive rule "drop every line that starts with >" over
the same inputs; the ratio says how many times that the whole rule set costs. Not a test.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from mailflow.quotes import extract_text, fixtures

ROOT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "replies"

HOSTILE = {
    "lead lines": "\n".join(f"On Mon, {i} Jan 2026, A wrote it all" for i in range(5_000)),
    "glued leads": "\n".join(f"line {i} On Mon, {i} Jan 2026, A <a{i}@b.c>" for i in range(5_000)),
    "label lines": "\n".join(f"From: a{i}@b.c\nSent: {i}" for i in range(5_000)),
    "sign-offs": "\n".join("Thanks,\nBob" for _ in range(10_000)),
    "long line": "x " * 60_000 + "On Mon, 1 Jan 2026, A <a@b.c> wrote:\n> q\n",
    "colons": "\n".join(f"{i} a b c d e f g h wrote:" for i in range(5_000)),
}


def naive(body: str) -> str:
    return "\n".join(line for line in body.split("\n") if not line.lstrip().startswith(">"))


def timed(function, inputs: list[str], repeat: int) -> list[float]:
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        for body in inputs:
            function(body)
        runs.append(time.perf_counter() - started)
    return runs


def show(name: str, runs: list[float], base: list[float], count: int, unit: str) -> None:
    scale = 1e6 if unit == "µs" else 1e3
    per = [r / count * scale for r in runs]
    ratio = statistics.median(runs) / statistics.median(base)
    print(
        f"{name:12} min {min(per):9.1f} {unit}  median {statistics.median(per):9.1f} {unit}  "
        f"max {max(per):9.1f} {unit}  (x{ratio:.0f} the naive '>' filter)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    bodies = [p.read_text(encoding="utf-8") for _, p in fixtures(ROOT) if p.suffix == ".txt"]
    show(
        "fixtures",
        timed(extract_text, bodies, args.repeat),
        timed(naive, bodies, args.repeat),
        len(bodies),
        "µs",
    )
    for name, body in HOSTILE.items():
        show(
            name,
            timed(extract_text, [body], args.repeat),
            timed(naive, [body], args.repeat),
            1,
            "ms",
        )


if __name__ == "__main__":
    main()
