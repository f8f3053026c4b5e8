"""High-availability benchmark: one `mailflow serve` against two on the same PostgreSQL.

    python bench/ha.py [--senders 20] [--replies 20] [--recipients 500] [--repeat 5]

One throw-away PostgreSQL (initdb in a temp folder, loopback port, fsync off: the server of
tests/postgres.py) holds one fresh database; one loopback SMTP sink (`mailflow.testing.Sink`,
accept and keep) runs in a child process and stamps each message's arrival
(`time.monotonic()`, the same clock in every process). A temp project on that database
declares one incident, INC-1, whose service notifies N people (--recipients, default 500);
its start email is delivered before any daemon starts. Every daemon is
`python -m mailflow.cli --config mailflow.toml serve --port 0 --tick 0.2` with the very same
mailflow.toml: only the inbound port differs (each binds a free one). Daemon A runs
throughout; daemon B is started for each "two" phase (and sent one untimed warm-up reply)
and stopped with SIGTERM after it. Each repeat runs both phases, "one" (A alone) and "two"
(A and B), alternating which goes first, so a busy moment of the machine hits both alike.
Each phase measures, one after the other:

* replies/s: --senders threads (smtplib) start together; each sends --replies replies, one
  SMTP connection per reply, to INC-1's signed reply address (the replies of
  bench/replies.py: known contacts, a short update line with a unique reference, a quoted
  history). With two daemons sender i talks to daemon i mod 2, so the load is split evenly.
  Rate = replies answered 250 / wall time from the start of the load to the last QUIT. Each
  250 means the update and the raw message are committed in PostgreSQL.
* fan-out msg/s: this process posts an update to INC-1 and queues it (`post_update` +
  `send_update`: N personalised emails in the outbox, one transaction; not timed). The clock
  starts at that commit and stops at the sink's arrival stamp of the last of the N emails;
  rate = N / that time. The daemons find the queue at their next tick (every 0.2 s), then
  claim batches with FOR UPDATE SKIP LOCKED, so with two daemons both send at once. The
  pickup (commit -> first arrival) is printed too: it is part of both figures alike.

Before each measurement the outbox is empty and every earlier reply is in the timeline, so
one phase's leftovers never run in the next. Printed per run: both figures for one and for
two daemons and their ratios two/one; then the median (min, max) of the ratios, and the
medians of the figures. A ratio of 2.0 would mean a second daemon doubles the throughput;
1.0 that it adds nothing (both share the machine's cores, the database and the sink here).

Then it checks the result, exit status 1 if anything is off: every reply answered 250
(warm-ups included) is an update of INC-1 exactly once (Entry kind='update', found by the
reference its body carries) and has its raw message stored (InMessage); every reply was
accepted; each fan-out reached the sink with each of its N Message-IDs exactly once (no
duplicates: nothing crashed); every daemon exited 0 on SIGTERM with no ERROR or traceback
in its log. Not a test: run by hand from the repository root (needs the PostgreSQL server
binaries, /usr/lib/postgresql/*/bin, and psycopg: `pip install -e '.[postgresql]'`).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.postgres: the throw-away server of the test suite

import replies as replies_bench  # noqa: E402  (bench/replies.py)
from replies import TAG, make_reply, send  # noqa: E402
from replies import load as replies_load  # noqa: E402

from mailflow import clock, tokens  # noqa: E402
from mailflow import incidents as inc  # noqa: E402
from mailflow.app import Mailflow  # noqa: E402
from mailflow.config import load_config  # noqa: E402
from mailflow.models import Entry, InMessage  # noqa: E402
from mailflow.testing import _Daemon, write_config  # noqa: E402

MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(<[^>\r\n]+>)", re.IGNORECASE | re.MULTILINE)
UPDATE = "Replica promoted; the application servers now point at db-2."


# --- the sink, in its own process -----------------------------------------------------------

def serve_sink() -> None:
    """Child-process mode: a Sink that stamps arrivals; `count`, `dump`, `clear` on stdin."""
    from mailflow.testing import Sink, SinkHandler

    class Stamping(SinkHandler):
        """Also records when each message arrived (the clock every process shares)."""

        def __init__(self) -> None:
            super().__init__()
            self.stamps: list[float] = []

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            answer = await super().handle_DATA(server, session, envelope)
            with self.lock:
                self.stamps.append(time.monotonic())
            return answer

    handler = Stamping()
    with Sink(handler=handler) as sink:
        print(f"PORT {sink.port}", flush=True)
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "count":
                print(len(handler.received), flush=True)
            elif cmd == "dump":  # one "stamp message-id" line per message, then "end"
                with handler.lock:
                    got = list(zip(handler.stamps, handler.received, strict=True))
                for stamp, r in got:
                    m = MESSAGE_ID.search(r.data)
                    print(f"{stamp!r} {m.group(1).decode() if m else '-'}")
                print("end", flush=True)
            elif cmd == "clear":
                with handler.lock:
                    handler.received.clear()
                    handler.stamps.clear()
                print("ok", flush=True)


class SinkProcess(replies_bench.SinkProcess):
    """The stamping Sink in a child process (no GIL shared with the senders)."""

    def __init__(self) -> None:
        super().__init__(__file__)

    def _line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def _ask(self, cmd: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()

    def dump(self) -> list[tuple[float, str]]:
        """(arrival stamp, Message-ID) of every message held."""
        self._ask("dump")
        out = []
        while (line := self._line()) != "end":
            stamp, mid = line.split(" ", 1)
            out.append((float(stamp), mid))
        return out

    def clear(self) -> None:
        """Forget what was received."""
        self._ask("clear")
        self._line()


# --- the project ----------------------------------------------------------------------------

def contacts_yaml(n: int) -> str:
    """The five people replies come from; a list of N (Ana, the lead, among them) notified."""
    people = [("Ana Lima", "ana@example.org"), ("Bob Stone", "bob@example.org"),
              ("Chloe Martin", "chloe@example.org"), ("Dan Boss", "dan@example.org"),
              ("Eve Chief", "eve@example.org")]
    lines = [f"  - {{name: {name}, email: {addr}}}" for name, addr in people]
    lines += [f"  - {{name: Person {i}, email: person{i:05d}@example.org}}"
              for i in range(1, n)]
    members = ["ana@example.org", *(f"person{i:05d}@example.org" for i in range(1, n))]
    return ("people:\n" + "\n".join(lines) + "\nlists:\n  everyone:\n"
            + "".join(f"    - {m}\n" for m in members)
            + "services:\n  learn:\n    title: ISC Learn Platform\n    notify: [everyone]\n"
            "    oncall: [ana@example.org]\n")


def make_project(folder: Path, sink: SinkProcess, url: str, n: int
                 ) -> tuple[Path, Mailflow, int, str, str]:
    """Config and contacts; INC-1 declared and its start email to N people delivered.
    Returns (config, this process's app, incident id, reply address, subject)."""
    (folder / "contacts.yaml").write_text(contacts_yaml(n), encoding="utf-8")
    config = write_config(folder, sink.port, database=url)
    app = Mailflow(load_config(config))
    now = clock.now()  # the daemons run on the real clock
    incident = inc.declare(app, now, service="learn", severity="P1", impact="outage",
                           summary="Learn platform returns 502 for every login",
                           lead="ana@example.org", author="ana@example.org")
    report = app.deliver_now(now)
    held = sink.count()
    if report.sent != n or held != n:
        raise SystemExit(f"the start email: sent {report.sent}, the sink holds {held}; "
                         f"expected {n}")
    sink.clear()
    cfg = app.config
    address = tokens.reply_address(cfg.reply_local, cfg.reply_domain, incident.id, cfg.secret)
    return config, app, incident.id, address, incident.subject


# --- the two measurements -------------------------------------------------------------------

@dataclass
class Fanout:
    """One fan-out: emails queued, delivered, seconds commit -> first and -> last arrival."""

    queued: int
    delivered: int
    duplicated: int
    pickup: float
    wall: float

    @property
    def rate(self) -> float:
        return self.queued / self.wall


def fanout(app: Mailflow, incident_id: int, sink: SinkProcess, timeout: float = 300.0
           ) -> Fanout:
    """Queue one update to everyone; wait until the sink holds each of its emails."""
    sink.clear()
    now = clock.now()
    incident = inc.get_incident(incident_id)
    inc.post_update(app, incident, UPDATE, author="ana@example.org", now=now)
    queued = set(inc.send_update(app, incident, now))  # committed when it returns
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if sink.count() >= len(queued):
            got = [(s, m) for s, m in sink.dump() if m in queued]
            if {m for _, m in got} == queued:
                break
        time.sleep(0.005)
    got = [(s, m) for s, m in sink.dump() if m in queued]
    stamps = [s for s, _ in got] or [time.monotonic()]
    return Fanout(len(queued), len({m for _, m in got}), len(got) - len({m for _, m in got}),
                  min(stamps) - t0, max(stamps) - t0)


def settle(app: Mailflow, replies: int, timeout: float = 120.0) -> None:
    """Wait until the outbox is empty and every accepted reply so far is stored."""
    deadline = time.monotonic() + timeout
    while app.outbox.pending() or InMessage.select().count() < replies:
        if time.monotonic() > deadline:
            raise SystemExit(f"not settled after {timeout:.0f} s: {app.outbox.pending()} "
                             f"emails pending, {InMessage.select().count()} of {replies} "
                             "replies stored")
        time.sleep(0.05)


# --- checks and printing --------------------------------------------------------------------

def daemon_problems(name: str, daemon: _Daemon, code: int) -> list[str]:
    """A daemon's exit code and the ERROR / traceback lines of its log."""
    problems = []
    if code != 0:
        problems.append(f"daemon {name} exited {code} after SIGTERM (expected 0)")
    bad = [line for line in daemon.log
           if " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback")]
    if bad:
        problems.append(f"daemon {name} logged errors:\n" + "\n".join(
            "    " + line for line in bad[:10]))
    return problems


def check_timeline(incident_id: int, accepted: set[tuple[int, int]]) -> list[str]:
    """Every accepted reply is an update of the incident exactly once, its raw reply kept."""
    seen: dict[tuple[int, int], int] = {}
    for e in Entry.select(Entry.text).where((Entry.incident == incident_id)
                                            & (Entry.kind == "update")):
        for s, q in TAG.findall(e.text):
            seen[(int(s), int(q))] = seen.get((int(s), int(q)), 0) + 1
    problems = []
    missing = sorted(ref for ref in accepted if ref not in seen)
    twice = sorted(ref for ref, n in seen.items() if n > 1)
    stray = sorted(ref for ref in seen if ref not in accepted)
    if missing:
        problems.append(f"{len(missing)} accepted repl(ies) not in the timeline, "
                        f"e.g. {missing[:5]}")
    if twice:
        problems.append(f"{len(twice)} repl(ies) posted more than once, e.g. {twice[:5]}")
    if stray:
        problems.append(f"{len(stray)} repl(ies) posted without a 250, e.g. {stray[:5]}")
    stored = InMessage.select().count()
    if stored != len(accepted):
        problems.append(f"{stored} raw replies stored (InMessage) for {len(accepted)} accepted")
    return problems


def load_average() -> str:
    """The machine's 1-minute load average and core count: how busy it was meanwhile."""
    return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


def spread(values: list[float]) -> str:
    """median (min, max)."""
    return f"{statistics.median(values):.2f} ({min(values):.2f}, {max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--senders", type=int, default=20,
                        help="concurrent senders (split evenly over two daemons)")
    parser.add_argument("--replies", type=int, default=20, help="replies per sender")
    parser.add_argument("--recipients", type=int, default=500, help="fan-out size N")
    parser.add_argument("--repeat", type=int, default=5,
                        help="repeats, each with one and with two daemons (median)")
    parser.add_argument("--serve-sink", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_sink:
        serve_sink()
        return
    if args.senders < 2 or args.senders % 2 or args.replies < 1 or args.repeat < 1 \
            or args.recipients < 2:
        parser.error("--senders must be even and at least 2; --replies and --repeat at "
                     "least 1; --recipients at least 2")
    from tests.postgres import Postgres

    total = args.senders * args.replies
    print(f"ha: replies {args.senders} senders x {args.replies} = {total} per phase, fan-out "
          f"to {args.recipients}; {args.repeat} repeat(s) of one daemon and two on one "
          f"PostgreSQL; python {sys.version.split()[0]}; {load_average()}", flush=True)

    problems: list[str] = []
    rows: list[tuple[int, dict[str, replies_bench.Run], dict[str, Fanout]]] = []
    pg = Postgres()
    sink: SinkProcess | None = None
    a: _Daemon | None = None
    b: _Daemon | None = None
    try:
        pg.start()
        url = pg.fresh()
        sink = SinkProcess()
        with tempfile.TemporaryDirectory(prefix="mailflow-bench-ha-") as tmp:
            config, app, incident_id, address, subject = make_project(
                Path(tmp), sink, url, args.recipients)
            accepted: set[tuple[int, int]] = set()
            warmups = iter(range(10_000))

            def warm_up(daemon: _Daemon, name: str) -> None:
                """One untimed reply (an extra sender), so first-use costs are not timed."""
                assert daemon.port is not None
                reply = make_reply(args.senders, next(warmups), address, subject)
                got = send(daemon.port, address, reply)
                if got.code != 250:
                    raise SystemExit(f"daemon {name} refused the warm-up reply ({got.code} "
                                     f"{got.error})")
                accepted.add(reply.ref)

            a = _Daemon(config)
            warm_up(a, "A")
            seq = 0
            for rep in range(1, args.repeat + 1):
                order = ("one", "two") if rep % 2 else ("two", "one")
                replies: dict[str, replies_bench.Run] = {}
                fans: dict[str, Fanout] = {}
                for phase in order:
                    if phase == "two":
                        b = _Daemon(config)
                        warm_up(b, "B")
                    ports = [d.port for d in (a, b) if d is not None]
                    per_sender = [[make_reply(s, seq + q, address, subject)
                                   for q in range(args.replies)] for s in range(args.senders)]
                    seq += args.replies
                    settle(app, len(accepted))
                    replies[phase] = replies_load([p for p in ports if p is not None], address,
                                                  per_sender)
                    accepted |= {r.ref for r in replies[phase].accepted}
                    settle(app, len(accepted))
                    fans[phase] = fanout(app, incident_id, sink)
                    if phase == "two" and b is not None:
                        problems += daemon_problems("B", b, b.stop())
                        b = None
                rows.append((rep, replies, fans))
                r1, r2, f1, f2 = replies["one"], replies["two"], fans["one"], fans["two"]
                print(f"  run {rep} ({order[0]} first): replies/s one {r1.rate:6.1f} two "
                      f"{r2.rate:6.1f} = {r2.rate / r1.rate:4.2f}x | fan-out msg/s one "
                      f"{f1.rate:6.1f} two {f2.rate:6.1f} = {f2.rate / f1.rate:4.2f}x "
                      f"(pickup {f1.pickup:.2f} / {f2.pickup:.2f} s)", flush=True)
                for phase in ("one", "two"):
                    r, f = replies[phase], fans[phase]
                    if len(r.accepted) != total:
                        codes = sorted({x.code for x in r.results if x.code != 250})
                        first = next(x.error for x in r.results if x.code != 250)
                        problems.append(f"run {rep} {phase}: {total - len(r.accepted)} of "
                                        f"{total} replies not accepted ({codes}), e.g. {first}")
                    if f.delivered != f.queued or f.duplicated:
                        problems.append(f"run {rep} {phase}: fan-out queued {f.queued}, "
                                        f"delivered {f.delivered}, duplicated {f.duplicated}")
            settle(app, len(accepted))
            problems += daemon_problems("A", a, a.stop())
            a = None
            problems += check_timeline(incident_id, accepted)
            app.close()
    finally:
        for d in (b, a):
            if d is not None and d.proc.poll() is None:
                d.kill()
        if sink is not None:
            sink.stop()
        pg.close()

    reply_ratio = [r["two"].rate / r["one"].rate for _, r, _ in rows]
    fan_ratio = [f["two"].rate / f["one"].rate for _, _, f in rows]
    med = statistics.median
    print(f"median of {len(rows)} ({load_average()}):")
    print(f"  replies/s    : one {med(r['one'].rate for _, r, _ in rows):6.1f}, two "
          f"{med(r['two'].rate for _, r, _ in rows):6.1f}")
    print(f"  fan-out msg/s: one {med(f['one'].rate for _, _, f in rows):6.1f}, two "
          f"{med(f['two'].rate for _, _, f in rows):6.1f}")
    print("ratio two/one, median (min, max):")
    print(f"  replies/s    : {spread(reply_ratio)}")
    print(f"  fan-out msg/s: {spread(fan_ratio)}")
    if problems:
        print("FAILED:")
        for p in problems:
            print(f"  - {p}")
        sys.exit(1)
    print(f"checked: all {len(accepted)} replies (warm-ups included) accepted and in the "
          f"timeline exactly once with their raw message; every fan-out's "
          f"{args.recipients} emails at the sink once each; the daemons exited 0 on SIGTERM "
          "with no ERROR or traceback logged")


if __name__ == "__main__":
    main()
