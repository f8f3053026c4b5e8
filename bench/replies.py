"""Inbound replies benchmark: the real `mailflow serve` daemon under concurrent replies.

    python bench/replies.py [--senders 50] [--replies 20] [--repeat 3] [--dir DIR]

A temp project with one declared incident (INC-1, start email written to a Maildir). Two
servers get the same load, each in its own process:

* sink:     `mailflow.testing.Sink`, a plain aiosmtpd server that accepts and keeps each
            message in memory: the cost of SMTP alone (the baseline).
* mailflow: `python -m mailflow.cli --config … serve --port 0 --tick 1`, the real daemon; the
            port is read from its `listening for replies on 127.0.0.1:PORT` log line. For each
            reply it checks the signed Reply-To token at RCPT, then at DATA reads the From
            header (a contact may always post), stores the raw message in one fsynced SQLite
            transaction, and only then answers 250; it parses and applies the reply after
            (the script waits for that before the next run and prints how long it took).

The load: --senders threads (smtplib) start together; each sends --replies replies, one SMTP
connection per reply (connect, EHLO, MAIL, RCPT to the incident's signed address, DATA, QUIT).
The replies come from the contacts (Bob, Ana, Chloe, Dan, Eve) and carry a short update line,
a unique Message-ID and a quoted copy of the incident email below "On … wrote:". They are
built and checked with `parse_reply` before timing. One warm-up reply per server is not timed.
Both servers run side by side and the load alternates between them, --repeat times (fresh
Message-IDs each time), so a busy moment of the machine hits both alike.

Printed per run, then as medians over the runs, per server: replies/s (accepted replies /
wall time from the start of the load to the last QUIT) and the p50 / p99 accept latency
(connect → the 250 answer to DATA, ms); then mailflow/sink for the rate and the latencies.
A rate ratio of 1.0 would mean mailflow's processing costs nothing next to SMTP; the daemon
handles DATA on one event loop, so its rate is bounded by 1 / (parse + fsynced commit + the
tick a posted reply wakes). With S concurrent senders, p50 latency ≈ S / rate once the server
is the bottleneck. The timeline grows by senders x replies per run: a mailflow rate that falls
from run to run means some per-reply work grows with the timeline.

Then it checks the result: the daemon is stopped with SIGTERM and must exit 0 with no ERROR
or traceback in its log; every reply answered 250 must be in the incident's timeline exactly
once (Entry kind='update', found by the reference each body carries; the update count and the
stored raw replies must equal the accepted count); and every reply must have been accepted,
by both servers. Exit status 1 otherwise.

The database is a real SQLite file (WAL, synchronous=FULL) in a temp folder; --dir puts that
folder elsewhere (fsync cost depends on the disk). Not a test: run by hand from the
repository root.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import smtplib
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import format_datetime, make_msgid
from pathlib import Path

from mailflow import clock, tokens
from mailflow import incidents as inc
from mailflow.app import Mailflow
from mailflow.config import load_config
from mailflow.models import Entry, InMessage, open_database
from mailflow.replies import parse_reply
from mailflow.testing import write_config

SENDERS = (("Bob Stone", "bob@example.org"), ("Ana Lima", "ana@example.org"),
           ("Chloe Martin", "chloe@example.org"), ("Dan Boss", "dan@example.org"),
           ("Eve Chief", "eve@example.org"))
UPDATES = (
    "Restarted php-fpm on web-2; the 502s are down to about 3 %.",
    "The sessions index looks corrupt, rebuilding it on the replica first.",
    "Load balancer health checks are green again for web-1 and web-3.",
    "Students in the library still report timeouts when logging in.",
    "Rolled back this morning's deploy and watching the error rate.",
    "Postgres replication lag is back under one second.",
    "Disk on db-1 was at 98 %; cleared old WAL archives, now at 61 %.",
    "Helpdesk confirms exam uploads work again for the two courses that called.",
)
TAG = re.compile(r"\(ref (\d+)\.(\d+)\)")  # every body carries "(ref SENDER.SEQ)"
LISTENING = re.compile(rb"listening for replies on [^:\s]+:(\d+)")


# --- the project and the replies ------------------------------------------------------------

def make_project(folder: Path) -> tuple[Path, str, str]:
    """Config, contacts, one declared incident. Returns (config path, reply address, subject)."""
    config = write_config(folder, None)  # mail to the Maildir; the tests' directory
    app = Mailflow(load_config(config))
    try:
        now = clock.now()
        incident = inc.declare(app, now, service="learn", severity="P1", impact="outage",
                               summary="Learn platform returns 502 for every login",
                               lead="ana@example.org", author="ana@example.org")
        app.deliver_now(now)  # the start email, to the Maildir
        cfg = app.config
        address = tokens.reply_address(cfg.reply_local, cfg.reply_domain, incident.id,
                                       cfg.secret)
        return config, address, incident.subject
    finally:
        app.close()


@dataclass(frozen=True)
class Reply:
    """One prepared reply: who sends it, its bytes, and the reference its body carries."""

    ref: tuple[int, int]
    mail_from: str
    data: bytes


def make_reply(sender: int, seq: int, to: str, subject: str) -> Reply:
    """A short realistic reply from a known contact, quoting the incident email."""
    name, addr = SENDERS[sender % len(SENDERS)]
    sent = clock.now() - timedelta(minutes=20)
    msg = EmailMessage()
    msg["From"] = f"{name} <{addr}>"
    msg["To"] = to
    msg["Subject"] = f"Re: {subject}"
    msg["Date"] = format_datetime(clock.now())
    msg["Message-ID"] = make_msgid(f"r{sender}.{seq}", domain="client.example")
    msg["In-Reply-To"] = msg["References"] = "<start.1@example.org>"
    msg.set_content(
        f"{UPDATES[(sender + seq) % len(UPDATES)]} (ref {sender}.{seq})\n\n"
        f"{name.split()[0]}\n\n"
        f"On {format_datetime(sent)}, Incident Desk <incidents@example.org> wrote:\n"
        f"> INCIDENT {subject}\n> Severity: P1 (high; target resolution within 4 h)\n"
        "> Who is impacted: not known yet\n> Reply to this email to post an update.\n"
    )
    reply = Reply((sender, seq), addr, msg.as_bytes(policy=SMTP_POLICY))
    parsed = parse_reply(reply.data, envelope_from=addr)
    found = TAG.findall(parsed.text)
    if parsed.commands or parsed.is_auto_reply or found != [(str(sender), str(seq))] \
            or "wrote:" in parsed.text:
        raise SystemExit(f"reply {sender}.{seq} does not parse as one plain update: {parsed}")
    return reply


# --- the servers ----------------------------------------------------------------------------

def serve_sink() -> None:
    """Child-process mode: run a Sink, print its port, answer `count` on stdin until EOF."""
    from mailflow.testing import Sink

    with Sink() as sink:
        print(f"PORT {sink.port}", flush=True)
        for line in sys.stdin:
            if line.strip() == "count":
                print(len(sink.received), flush=True)


class SinkProcess:
    """`mailflow.testing.Sink` (accept and keep) in a child process."""

    name = "sink"

    def __init__(self, script: str = __file__) -> None:
        # `script --serve-sink` runs the child (bench/ha.py passes its own stamping sink).
        self.proc = subprocess.Popen([sys.executable, script, "--serve-sink"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline().split()
        if len(first) != 2 or first[0] != "PORT":
            self.stop()
            raise SystemExit(f"the sink process did not start (said {first!r})")
        self.port = int(first[1])

    def count(self) -> int:
        """Messages the sink holds."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("count\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def stop(self) -> int:
        """Close its stdin (it exits); returns its exit code."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


class DaemonProcess:
    """The real daemon: `python -m mailflow.cli --config FILE serve --port 0 --tick 1`."""

    name = "mailflow"

    def __init__(self, config: Path) -> None:
        self.log_path = config.parent / "daemon.log"
        env = {k: v for k, v in os.environ.items()
               if k not in ("MAILFLOW_NOW", "MAILFLOW_CONFIG", "NOTIFY_SOCKET", "JOURNAL_STREAM")}
        with open(self.log_path, "wb") as log:  # a file, not a pipe: nobody has to drain it
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mailflow.cli", "--config", str(config), "serve",
                 "--port", "0", "--tick", "1"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, cwd=config.parent)
        deadline = time.monotonic() + 30
        while True:
            m = LISTENING.search(self.log_path.read_bytes())
            if m:
                self.port = int(m.group(1))
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"the daemon did not start:\n{self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, lines: int = 15) -> str:
        """The end of the daemon's log, for error messages."""
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join("    " + line for line in text.splitlines()[-lines:])

    def errors(self) -> list[str]:
        """Log lines at ERROR or CRITICAL, and tracebacks."""
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return [line for line in text.splitlines()
                if " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback")]

    def stop(self) -> int:
        """SIGTERM, then wait (it finishes the transaction in flight); returns its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -9


# --- the load -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Result:
    """What one reply got: the DATA answer (or an error) and connect → 250 seconds."""

    ref: tuple[int, int]
    code: int
    seconds: float
    error: str = ""


def send(port: int, to: str, reply: Reply) -> Result:
    """One SMTP connection, one reply."""
    t0 = time.perf_counter()
    try:
        with smtplib.SMTP("127.0.0.1", port, local_hostname="client.example",
                          timeout=120) as smtp:
            smtp.ehlo()
            smtp.mail(reply.mail_from)
            code, answer = smtp.rcpt(to)
            if code != 250:
                return Result(reply.ref, code, 0.0, f"RCPT: {answer.decode(errors='replace')}")
            try:
                code, answer = smtp.data(reply.data)
            except smtplib.SMTPDataError as exc:
                code, answer = exc.smtp_code, exc.smtp_error
            elapsed = time.perf_counter() - t0
            return Result(reply.ref, code, elapsed,
                          "" if code == 250 else answer.decode(errors="replace"))
    except (OSError, smtplib.SMTPException) as exc:
        return Result(reply.ref, 0, 0.0, f"{type(exc).__name__}: {exc}")


@dataclass
class Run:
    """One server's figures."""

    results: list[Result]
    wall: float
    applied: float = 0.0  # mailflow: seconds after the last answer until all were applied

    @property
    def accepted(self) -> list[Result]:
        return [r for r in self.results if r.code == 250]

    @property
    def rate(self) -> float:
        return len(self.accepted) / self.wall

    def latency_ms(self, q: int) -> float:
        """The q-th percentile of connect → 250, in ms."""
        lat = sorted(r.seconds for r in self.accepted)
        if not lat:
            return float("nan")
        return 1000 * (statistics.quantiles(lat, n=100)[q - 1] if len(lat) > 1 else lat[0])


def load(ports: list[int], to: str, per_sender: list[list[Reply]]) -> Run:
    """All senders at once, each its replies one after another, sender i to
    ports[i mod len(ports)] (bench/ha.py spreads them over two daemons); wall time to the
    last QUIT."""
    results: list[Result] = []
    lock = threading.Lock()
    go = threading.Barrier(len(per_sender) + 1)

    def worker(port: int, replies: list[Reply]) -> None:
        go.wait()
        mine = [send(port, to, r) for r in replies]
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=worker, args=(ports[i % len(ports)], rs), daemon=True)
               for i, rs in enumerate(per_sender)]
    for t in threads:
        t.start()
    go.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return Run(results, time.perf_counter() - t0)


def wait_applied(database: Path, timeout: float = 300.0) -> float:
    """Seconds until the daemon has applied every reply it answered 250 (its `accepted`
    table is empty); read-only, as any reader of the WAL database."""
    t0 = time.perf_counter()
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)
    try:
        while conn.execute("SELECT count(*) FROM accepted").fetchone()[0]:
            if time.perf_counter() - t0 > timeout:
                raise SystemExit(f"the daemon did not apply its accepted replies in {timeout} s")
            time.sleep(0.01)
    finally:
        conn.close()
    return time.perf_counter() - t0


def check_timeline(config: Path, accepted: list[Result], warmup: tuple[int, int]
                   ) -> list[str]:
    """Every accepted reply (and the warm-up) is an update of the incident exactly once."""
    db = open_database(load_config(config).database)
    try:
        texts = [e.text for e in Entry.select().where(Entry.kind == "update")]
        stored = InMessage.select().count()
    finally:
        db.close()
    seen = Counter((int(s), int(q)) for text in texts for s, q in TAG.findall(text))
    expected = {r.ref for r in accepted} | {warmup}
    problems = []
    missing = sorted(ref for ref in expected if seen[ref] == 0)
    twice = sorted(ref for ref in expected if seen[ref] > 1)
    if missing:
        problems.append(f"{len(missing)} accepted repl(ies) missing from the timeline, "
                        f"e.g. {missing[:5]}")
    if twice:
        problems.append(f"{len(twice)} repl(ies) posted more than once, e.g. {twice[:5]}")
    if len(texts) != len(expected):
        problems.append(f"{len(texts)} update entries for {len(expected)} accepted replies")
    if stored != len(expected):
        problems.append(f"{stored} raw replies stored (InMessage) for {len(expected)} accepted")
    return problems


def summary(name: str, runs: list[Run], total: int) -> list[str]:
    """Print one server's medians over the repeats; returns the problems (replies refused)."""
    med = statistics.median
    print(f"  {name:<8}: {med(r.rate for r in runs):7.1f} replies/s | accept latency p50 "
          f"{med(r.latency_ms(50) for r in runs):7.1f} ms, p99 "
          f"{med(r.latency_ms(99) for r in runs):7.1f} ms")
    refused = [x for r in runs for x in r.results if x.code != 250]
    if not refused:
        return []
    codes = Counter(x.code for x in refused)
    return [f"{name}: {len(refused)} of {total * len(runs)} repl(ies) not accepted "
            f"({dict(codes)}), e.g. {refused[0].error}"]


def line(run: Run, total: int) -> str:
    return (f"{run.rate:7.1f}/s ({len(run.accepted)}/{total} in {run.wall:5.2f} s, p50 "
            f"{run.latency_ms(50):6.1f} ms, p99 {run.latency_ms(99):6.1f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--senders", type=int, default=50, help="concurrent senders")
    parser.add_argument("--replies", type=int, default=20, help="replies per sender")
    parser.add_argument("--repeat", type=int, default=3,
                        help="load runs per server, alternating sink / mailflow (median)")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where the temp project goes (default: the system temp folder)")
    parser.add_argument("--serve-sink", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_sink:
        serve_sink()
        return
    if args.senders < 1 or args.replies < 1 or args.repeat < 1:
        parser.error("--senders, --replies and --repeat must be at least 1")
    total = args.senders * args.replies
    print(f"replies: {args.senders} concurrent senders x {args.replies} replies = {total} per "
          f"run, one SMTP connection each, {args.repeat} run(s) per server, "
          f"python {sys.version.split()[0]}")

    problems: list[str] = []
    base: list[Run] = []
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="mailflow-bench-replies-", dir=args.dir) as tmp:
        config, address, subject = make_project(Path(tmp))
        database = load_config(config).database
        # One set of replies per repeat: a Message-ID seen before would be "already posted".
        loads = [[[make_reply(s, rep * args.replies + q, address, subject)
                   for q in range(args.replies)] for s in range(args.senders)]
                 for rep in range(args.repeat)]
        warmup = make_reply(args.senders, 0, address, subject)  # an extra sender, untimed
        size = sum(len(r.data) for rs in loads[0] for r in rs) / total

        sink = SinkProcess()
        daemon: DaemonProcess | None = None
        try:
            daemon = DaemonProcess(config)
            for server in (sink, daemon):
                first = send(server.port, address, warmup)
                if first.code != 250:
                    raise SystemExit(f"{server.name} refused the warm-up reply ({first.code} "
                                     f"{first.error})")
            for rep, per_sender in enumerate(loads, 1):
                base.append(load([sink.port], address, per_sender))
                runs.append(load([daemon.port], address, per_sender))
                # The next run starts once the daemon has applied this one: applying in the
                # background must not slow the sink's run, nor the next one's.
                runs[-1].applied = wait_applied(database)
                print(f"  run {rep}: sink {line(base[-1], total)} | mailflow "
                      f"{line(runs[-1], total)}, all applied {runs[-1].applied:4.2f} s after",
                      flush=True)
            held = sink.count() - 1
            if held != sum(len(r.accepted) for r in base):
                problems.append(f"the sink holds {held} replies, "
                                f"{sum(len(r.accepted) for r in base)} were accepted")
        finally:
            sink.stop()
            code = daemon.stop() if daemon is not None else 0
        if code != 0:
            problems.append(f"the daemon exited {code} after SIGTERM (expected 0):\n"
                            f"{daemon.log_tail() if daemon else ''}")
        elif daemon is not None and daemon.errors():
            problems.append("the daemon logged errors:\n" + "\n".join(
                "    " + e for e in daemon.errors()[:15]))
        problems += check_timeline(config, [x for r in runs for x in r.accepted], warmup.ref)

    med = statistics.median
    print(f"median of {args.repeat} ({size / 1024:.1f} KiB per reply):")
    problems = summary("sink", base, total) + summary("mailflow", runs, total) + problems
    ratio = [m.rate / b.rate for m, b in zip(runs, base, strict=False)]
    p50 = [m.latency_ms(50) / b.latency_ms(50) for m, b in zip(runs, base, strict=False)]
    p99 = [m.latency_ms(99) / b.latency_ms(99) for m, b in zip(runs, base, strict=False)]
    print("ratio mailflow/sink:")
    print(f"  replies/s   : {med(ratio):6.3f}  (runs {min(ratio):.3f}-{max(ratio):.3f}; 1.0 = a "
          "reply costs no more than SMTP itself; target >= 0.5)")
    print(f"  p50 latency : {med(p50):6.1f}x  (runs {min(p50):.1f}-{max(p50):.1f})")
    print(f"  p99 latency : {med(p99):6.1f}x  (runs {min(p99):.1f}-{max(p99):.1f}; target <= 2)")
    print(f"  time per reply (1/rate): mailflow {1000 / med(r.rate for r in runs):.2f} ms, "
          f"sink {1000 / med(r.rate for r in base):.2f} ms")
    applied = [r.applied for r in runs]
    print(f"  applied after the last answer: {med(applied):.2f} s (min {min(applied):.2f}, max "
          f"{max(applied):.2f}); answered and applied: "
          f"{med(len(r.accepted) / (r.wall + r.applied) for r in runs):.1f} replies/s")
    if problems:
        print("FAILED:")
        for p in problems:
            print(f"  - {p}")
        sys.exit(1)
    accepted = sum(len(r.accepted) for r in runs) + 1
    print(f"checked: every reply accepted by both servers; all {accepted} accepted by mailflow "
          "(warm-up included) are in the timeline exactly once; the daemon exited 0 on SIGTERM")


if __name__ == "__main__":
    main()
