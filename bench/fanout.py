"""Fan-out benchmark: one incident update to N personalised recipients, versus raw aiosmtplib
and the real awdeorio/mailmerge.

    python bench/fanout.py [--recipients 1000] [--repeat 5] [--concurrency N]
                           [--sink process|thread] [--profile [FILE]]

Per repeat, against the same loopback SMTP sink (`mailflow.testing.Sink`):

* mailflow:  a fresh temp project whose service notifies a list of N people (names, half with
             time zones), with mailflow's default settings (`--concurrency` overrides
             `[outbound] concurrency`, 2 by default); the incident is declared and its start
             email delivered untimed; then TIMED: post_update + send_update (render once,
             personalise N, queue in SQLite) + app.deliver_now until the sink has all N;
             rate = N / seconds.
* raw:       the very N messages mailflow just sent (read back from its outbox before the
             clock starts), sent with aiosmtplib's `sendmail` over ONE connection (connect
             and QUIT included, as in deliver_now); rate = N / seconds.
* mailmerge: the real tool (`pip install -e '.[bench]'` installs mailmerge 2.3.0), run as
             a user runs it: `mailmerge --no-dry-run --no-limit --template ... --database
             ... --config ...` in a subprocess, TIMED by wall clock from spawn to exit, so its
             Python start-up and imports count (a fair part of using it; about 0.2 s here).
             Its inputs are written before the clock starts: mailmerge_template.txt holds
             TO/FROM/SUBJECT headers and a multipart/alternative Jinja body with the same
             text and HTML parts as mailflow's update (the greeting's name a variable),
             mailmerge_database.csv the N recipients, mailmerge_server.conf the sink
             (127.0.0.1, its port, security = Never). Per message mailmerge renders the
             template, parses and re-encodes it with stdlib email, reads the HTML with
             html5lib (looking for inline images), prints it (to /dev/null here) and sends it
             over a new smtplib connection. rate = N / seconds.
* mailmerge-like loop (an imitation, kept for comparison): the messages mailflow sent, each
             over a new stdlib smtplib connection (connect, EHLO, MAIL, RCPT, DATA, QUIT),
             as mailmerge's send loop does, without its rendering, parsing or start-up.

The ratios are mailflow/raw, mailflow/mailmerge and mailflow/loop per repeat; the medians
(min, max) over --repeat runs are reported, with the targets (>= 1.0 and >= 4).

The sink runs in a separate process by default (`--sink process`), so its CPU work is not
billed to the sender's GIL; `--sink thread` runs it in-process as the tests do (on a 2-core
box that made raw *faster*, no cross-process wake-ups, and the ratio slightly lower: 0.18
against 0.20 at N=1000). Exit status 1 if any count is off.
Not a test: run by hand. Only reads the project; writes only to a temp folder.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import csv
import email
import email.policy
import inspect
import io
import pstats
import shutil
import smtplib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiosmtplib
import peewee

from mailflow import incidents as inc
from mailflow.app import Mailflow
from mailflow.config import Outbound, load_config
from mailflow.contacts import Contacts, parse_contacts
from mailflow.models import OutMessage

T0 = datetime(2026, 11, 24, 10, 0, tzinfo=timezone.utc)
T1 = T0 + timedelta(minutes=20)  # when the timed update is posted and sent
SENDER = "Incident Desk <incidents@example.org>"
ENVELOPE_FROM = "incidents@example.org"
ZONES = ("Europe/Zurich", "America/New_York", "Asia/Kolkata", "Australia/Sydney")
FIRST = ("Ana", "Bob", "Chloé", "Dev", "Eva", "Frank", "Grace", "Hugo", "Inès", "Jonas")
LAST = ("Lima", "Stone", "Martin", "Patel", "Novak", "Meier", "Okafor", "Dubois", "Rossi")


# --- the sink -------------------------------------------------------------------------------

def serve_sink() -> None:
    """Child-process mode: run a Sink, print its port, answer `stats` / `clear` on stdin."""
    from mailflow.testing import Sink

    with Sink() as sink:
        print(f"PORT {sink.port}", flush=True)
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "stats":
                got = sink.received
                rcpts = {r for m in got for r in m.rcpt_tos}
                print(f"{len(got)} {len(rcpts)} {sum(len(m.data) for m in got)}", flush=True)
            elif cmd == "clear":
                sink.clear()
                print("ok", flush=True)
            elif cmd == "quit":
                break


@dataclass
class Stats:
    messages: int
    recipients: int
    size: int


class ProcessSink:
    """The Sink in a child process (no GIL shared with the sender)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve-sink"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        first = self.proc.stdout.readline().split()
        if len(first) != 2 or first[0] != "PORT":
            self.close()
            raise SystemExit(f"sink process did not start (said {first!r})")
        self.port = int(first[1])

    def _ask(self, cmd: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def stats(self) -> Stats:
        n, r, size = map(int, self._ask("stats").split())
        return Stats(n, r, size)

    def clear(self) -> None:
        self._ask("clear")

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


class ThreadSink:
    """The Sink in a thread of this process, as the tests use it."""

    def __init__(self) -> None:
        from mailflow.testing import Sink

        self.sink = Sink().start()
        self.port = self.sink.port

    def stats(self) -> Stats:
        got = self.sink.received
        return Stats(len(got), len({r for m in got for r in m.rcpt_tos}),
                     sum(len(m.data) for m in got))

    def clear(self) -> None:
        self.sink.clear()

    def close(self) -> None:
        self.sink.stop()


# --- the project ----------------------------------------------------------------------------

def address(i: int) -> str:
    return f"person{i:05d}@example.org"


def contacts_yaml(n: int) -> str:
    """N people (names; every other one with a time zone) on one list a service notifies."""
    people = []
    for i in range(n):
        name = f"{FIRST[i % len(FIRST)]} {LAST[(i // len(FIRST)) % len(LAST)]}{i}"
        tz = f", timezone: {ZONES[(i // 2) % len(ZONES)]}" if i % 2 == 0 else ""
        people.append(f"  - {{name: {name}, email: {address(i)}{tz}}}")
    members = "\n".join(f"    - {address(i)}" for i in range(n))
    return (
        "people:\n" + "\n".join(people) + "\n"
        "lists:\n  everyone:\n" + members + "\n"
        "services:\n  learn:\n    title: ISC Learn Platform\n    notify: [everyone]\n"
        f"    oncall: [{address(0)}]\n"  # leads by default, and is on the list already
    )


CONCURRENCY: list[int | None] = [None]  # --concurrency; None: mailflow's default


def make_project(folder: Path, port: int, contacts_text: str,
                 concurrency: int | None = None) -> Path:
    """mailflow.toml (relay = the sink, no STARTTLS; concurrency as given, else the default)
    + contacts.yaml."""
    (folder / "contacts.yaml").write_text(contacts_text, encoding="utf-8")
    path = folder / "mailflow.toml"
    path.write_text(
        'database = "state/mailflow.db"\ncontacts = "contacts.yaml"\n'
        f'from = "{SENDER}"\nreply_to = "{ENVELOPE_FROM}"\nsecret = "bench-secret-0123456789"\n\n'
        f'[outbound]\nhost = "127.0.0.1"\nport = {port}\nstarttls = false\n'
        + (f"concurrency = {concurrency}\n" if concurrency is not None else ""),
        encoding="utf-8",
    )
    return path


def prepared_incident(folder: Path, port: int, contacts_text: str,
                      contacts: Contacts, sink: Any, n: int) -> tuple[Mailflow, Any, Stats]:
    """An app with an open incident whose start email to N people is already delivered."""
    app = Mailflow(load_config(make_project(folder, port, contacts_text, CONCURRENCY[0])),
                   contacts=contacts)
    incident = inc.declare(
        app, T0, service="learn", severity="P1", impact="outage",
        summary="Learn platform returns 502 on every course page",
        eta="unknown: depends on the database restore", started="Restarting the DB primary",
        next_steps="Check replication lag", author="ana@example.org",
    )
    report = app.deliver_now(T0)
    start = sink.stats()
    if report.sent != n or start.messages != n or start.recipients != n:
        raise SystemExit(f"start email: sent {report.sent}, sink got {start.messages} messages "
                         f"to {start.recipients} recipients; expected {n}")
    sink.clear()
    return app, incident, start


# --- the two measurements -------------------------------------------------------------------

async def _send_raw(port: int, messages: list[tuple[str, bytes]]) -> None:
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=30)
    await smtp.connect()
    for rcpt, raw in messages:
        await smtp.sendmail(ENVELOPE_FROM, [rcpt], raw)
    await smtp.quit()


def run_mailmerge_loop(port: int, messages: list[tuple[str, bytes]]) -> float:
    """Seconds to send them as an imitation of awdeorio/mailmerge's send loop: for each
    message a new stdlib smtplib connection (connect, EHLO, MAIL, RCPT, DATA, QUIT)."""
    t = time.perf_counter()
    for rcpt, raw in messages:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
            smtp.sendmail(ENVELOPE_FROM, [rcpt], raw)
    return time.perf_counter() - t


# --- the real awdeorio/mailmerge -------------------------------------------------------------

def mailmerge_command() -> list[str]:
    """The installed `mailmerge` (next to this Python first); exits with a hint if missing."""
    tool = Path(sys.executable).with_name("mailmerge")
    found = str(tool) if tool.exists() else shutil.which("mailmerge")
    if not found:
        raise SystemExit("mailmerge is not installed: pip install -e '.[bench]'")
    return [found]


def mailmerge_files(folder: Path, port: int, sample: bytes, n: int) -> list[str]:
    """mailmerge's three input files for the same fan-out; returns its arguments.

    The template is the update email mailflow sent to one recipient, as a mailmerge user
    would write it: TO/FROM/SUBJECT headers and a multipart/alternative body with the same
    text and HTML parts (decoded), the greeting's first name as a Jinja variable. The
    database holds the N recipients; the server config points at the sink, no TLS, no login.
    """
    msg = email.message_from_bytes(sample, policy=email.policy.default)
    first = FIRST[(1 % n) % len(FIRST)]  # the sample is person 1's copy ("Hello Bob,")
    parts = [(p.get_content_type(), p.get_content().replace(f"Hello {first},", "Hello {{first}},"))
             for p in msg.walk() if p.get_content_maintype() == "text"]
    if len(parts) != 2 or any("Hello {{first}}," not in text for _, text in parts):
        raise SystemExit("the sample update has no text and HTML part greeting its recipient")
    boundary = "mailmerge-bench-boundary"
    body = "".join(f"--{boundary}\nContent-Type: {ctype}; charset=utf-8\n\n{text}\n"
                   for ctype, text in parts)
    (folder / "mailmerge_template.txt").write_text(
        "TO: {{name}} <{{email}}>\n"
        f"FROM: {SENDER}\nSUBJECT: {msg['Subject']}\nMIME-Version: 1.0\n"
        f'Content-Type: multipart/alternative; boundary="{boundary}"\n\n'
        f"{body}--{boundary}--\n", encoding="utf-8")
    with (folder / "mailmerge_database.csv").open("w", encoding="utf-8", newline="") as f:
        out = csv.writer(f)
        out.writerow(["email", "name", "first"])
        for i in range(n):
            name = f"{FIRST[i % len(FIRST)]} {LAST[(i // len(FIRST)) % len(LAST)]}{i}"
            out.writerow([address(i), name, name.split()[0]])
    (folder / "mailmerge_server.conf").write_text(
        f"[smtp_server]\nhost = 127.0.0.1\nport = {port}\nsecurity = Never\n",
        encoding="utf-8")
    return ["--no-dry-run", "--no-limit",
            "--template", str(folder / "mailmerge_template.txt"),
            "--database", str(folder / "mailmerge_database.csv"),
            "--config", str(folder / "mailmerge_server.conf")]


def run_real_mailmerge(command: list[str]) -> float:
    """Seconds from spawning `mailmerge` to its exit (process start and imports included).

    Its per-message printout goes to /dev/null, the cheapest place a user could send it.
    """
    t = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    took = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"mailmerge exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return took


def run_raw(port: int, messages: list[tuple[str, bytes]]) -> float:
    """Seconds to send them all over one connection (connect and QUIT included)."""
    t = time.perf_counter()
    asyncio.run(_send_raw(port, messages))
    return time.perf_counter() - t


@dataclass
class MailflowTimes:
    queue: float  # post_update + send_update: render, personalise, insert into SQLite
    deliver: float  # app.deliver_now: claim, SMTP, mark sent

    @property
    def total(self) -> float:
        return self.queue + self.deliver


def run_mailflow(app: Mailflow, incident: Any, n: int) -> MailflowTimes:
    t = time.perf_counter()
    inc.post_update(app, incident, "Primary restored from the 09:00 backup; replaying WAL.",
                    author="ana@example.org", now=T1)
    queued = inc.send_update(app, incident, T1)
    t_queue = time.perf_counter()
    report = app.deliver_now(T1)
    t_end = time.perf_counter()
    if len(queued) != n or report.sent != n or report.errors:
        raise SystemExit(f"update: queued {len(queued)}, sent {report.sent}, "
                         f"errors {report.errors[:3]}; expected {n}")
    return MailflowTimes(t_queue - t, t_end - t_queue)


# --- driver ---------------------------------------------------------------------------------

def check(sink: Any, n: int, what: str) -> Stats:
    got = sink.stats()
    if got.messages != n or got.recipients != n:
        print(f"FAIL {what}: sink got {got.messages} messages to {got.recipients} distinct "
              f"recipients, expected {n}", file=sys.stderr)
        sys.exit(1)
    sink.clear()
    return got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--sink", choices=("process", "thread"), default="process",
                        help="where the SMTP sink runs (default: a separate process)")
    parser.add_argument("--profile", nargs="?", const="-", metavar="FILE",
                        help="also profile one more mailflow phase (cProfile, by cumulative "
                             "time); FILE keeps the raw .prof, '-' only prints")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="mailflow's [outbound] concurrency (default: mailflow's default, "
                             "2); the raw baseline always uses 1 connection")
    parser.add_argument("--serve-sink", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_sink:
        serve_sink()
        return
    n = args.recipients
    CONCURRENCY[0] = args.concurrency
    if n < 1 or args.repeat < 1:
        parser.error("--recipients and --repeat must be at least 1")

    command = mailmerge_command()
    concurrency = args.concurrency or Outbound().concurrency
    contacts_text = contacts_yaml(n)
    contacts = parse_contacts(contacts_text, "bench-contacts.yaml")  # parsed once, reused
    sink: ProcessSink | ThreadSink = ProcessSink() if args.sink == "process" else ThreadSink()
    print(f"fanout: {n} recipients, {args.repeat} repeat(s), sink in a {args.sink}, "
          f"mailflow concurrency {concurrency}"
          f"{'' if args.concurrency else ' (the default)'}, "
          f"python {sys.version.split()[0]}")
    raw_rates, mf_rates, ratios = [], [], []
    mm_rates: list[float] = []
    mm_ratios: list[float] = []
    loop_rates: list[float] = []
    loop_ratios: list[float] = []
    mm_size = 0
    queue_s, deliver_s = [], []
    try:
        for rep in range(1, args.repeat + 1):
            with tempfile.TemporaryDirectory(prefix="mailflow-bench-") as tmp:
                app, incident, _start = prepared_incident(
                    Path(tmp), sink.port, contacts_text, contacts, sink, n)
                try:
                    times = run_mailflow(app, incident, n)
                    mf_got = check(sink, n, "mailflow")
                    # The baseline sends the very bytes mailflow just sent: same sizes, same
                    # line count (the sink's cost is per line), built before its clock starts.
                    messages = [(m.recipient, bytes(m.content)) for m in OutMessage.select().where(
                        OutMessage.kind == "update")]
                finally:
                    app.close()
            raw_s = run_raw(sink.port, messages)
            raw_got = check(sink, n, "raw aiosmtplib")
            loop_s = run_mailmerge_loop(sink.port, messages)
            check(sink, n, "mailmerge-like loop")
            with tempfile.TemporaryDirectory(prefix="mailflow-bench-mailmerge-") as mm_tmp:
                argv = command + mailmerge_files(Path(mm_tmp), sink.port,
                                                 dict(messages)[address(1 % n)], n)
                mm_s = run_real_mailmerge(argv)
            mm_size = check(sink, n, "mailmerge").size
            del messages
            raw_rate, mf_rate, mm_rate = n / raw_s, n / times.total, n / mm_s
            loop_rate = n / loop_s
            raw_rates.append(raw_rate)
            mf_rates.append(mf_rate)
            mm_rates.append(mm_rate)
            loop_rates.append(loop_rate)
            ratios.append(mf_rate / raw_rate)
            mm_ratios.append(mf_rate / mm_rate)
            loop_ratios.append(mf_rate / loop_rate)
            queue_s.append(times.queue)
            deliver_s.append(times.deliver)
            print(f"  run {rep}: raw {raw_rate:7.0f} msg/s ({raw_s:.3f} s, "
                  f"{raw_got.size / n / 1024:.1f} KiB/msg) | mailflow {mf_rate:7.0f} msg/s "
                  f"({times.total:.3f} s = render+queue {times.queue:.3f} + deliver "
                  f"{times.deliver:.3f}; {mf_got.size / n / 1024:.1f} KiB/msg) | "
                  f"mailmerge {mm_rate:5.0f} msg/s ({mm_s:.3f} s) | loop {loop_rate:5.0f} "
                  f"msg/s | ratio {mf_rate / raw_rate:.3f}, x{mf_rate / mm_rate:.2f} "
                  f"mailmerge, x{mf_rate / loop_rate:.2f} loop")

        med = statistics.median
        print(f"median of {args.repeat}:")
        print(f"  raw aiosmtplib, 1 connection : {med(raw_rates):8.0f} msg/s")
        print(f"  mailflow update fan-out      : {med(mf_rates):8.0f} msg/s")
        print(f"    render+queue (post_update + send_update) : {med(queue_s):.3f} s "
              f"({med(queue_s) / n * 1e3:.3f} ms/recipient)")
        print(f"    deliver (app.deliver_now)                : {med(deliver_s):.3f} s "
              f"({med(deliver_s) / n * 1e3:.3f} ms/recipient; alone "
              f"{n / med(deliver_s):.0f} msg/s)")
        print(f"  mailmerge 2.3.0 (the real tool, process start included): "
              f"{med(mm_rates):8.0f} msg/s  (min {min(mm_rates):.0f}, max {max(mm_rates):.0f}; "
              f"{mm_size / n / 1024:.1f} KiB/msg as it encodes them)")
        print(f"  mailmerge-like loop (imitation, 1 smtplib conn/msg): {med(loop_rates):8.0f} "
              f"msg/s  (min {min(loop_rates):.0f}, max {max(loop_rates):.0f})")
        print(f"  ratio mailflow/raw           : {med(ratios):8.3f}  (min {min(ratios):.3f}, "
              f"max {max(ratios):.3f}; target >= 1.0)")
        print(f"  ratio mailflow/mailmerge     : {med(mm_ratios):8.2f}  (min {min(mm_ratios):.2f}, "
              f"max {max(mm_ratios):.2f}; target >= 4)")
        print(f"  ratio mailflow/loop          : {med(loop_ratios):8.2f}  (min "
              f"{min(loop_ratios):.2f}, max {max(loop_ratios):.2f}; the imitation)")
        met = med(ratios) >= 1.0 and med(mm_ratios) >= 4
        print(f"  target (median >= 1.0x raw and >= 4x mailmerge): {'MET' if met else 'NOT MET'}")

        if args.profile:
            profile(args.profile, sink, contacts_text, contacts, n)
    finally:
        sink.close()


@contextlib.contextmanager
def timed(spots: list[tuple[Any, str, str]], into: dict[str, list[float]]) -> Iterator[None]:
    """Wrap functions with wall-clock accumulators (calls, seconds); restore them afterwards."""
    saved = []
    for owner, name, label in spots:
        fn = getattr(owner, name)
        saved.append((owner, name, fn))
        slot = into.setdefault(label, [0, 0.0])

        def wrapper(*a: Any, _fn: Any = fn, _slot: list[float] = slot, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return _fn(*a, **k)
            finally:
                _slot[0] += 1
                _slot[1] += time.perf_counter() - t

        async def awrapper(*a: Any, _fn: Any = fn, _slot: list[float] = slot, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return await _fn(*a, **k)
            finally:
                _slot[0] += 1
                _slot[1] += time.perf_counter() - t

        setattr(owner, name, awrapper if inspect.iscoroutinefunction(fn) else wrapper)
    try:
        yield
    finally:
        for owner, name, fn in reversed(saved):
            setattr(owner, name, fn)


def profile(dest: str, sink: Any, contacts_text: str, contacts: Contacts, n: int) -> None:
    """Two more mailflow phases: a wall-clock split of mailflow's steps, then cProfile."""
    from mailflow import outbox, render

    spots = [
        (inc, "communicate", "incidents.communicate (render+personalise+insert)"),
        (render.Renderer, "html", "  Renderer.html (Jinja + premailer, once)"),
        (render._Markers, "values", "  _Markers.values (per recipient)"),
        (inc, "personal", "  incidents.personal (contacts lookup)"),
        (render.Skeleton, "build", "  Skeleton.build (per recipient)"),
        (outbox.Outbox, "_claim", "Outbox._claim (on the lane, overlaps sending)"),
        (outbox.Outbox, "_mark_sent", "Outbox._mark_sent (on the lane, overlaps sending)"),
        (outbox.SMTPTransport, "send", "SMTPTransport.send (MAIL, RCPT, DATA)"),
        (peewee.SqliteDatabase, "execute_sql", "every SQL statement (overlaps the above)"),
        (peewee._atomic, "__exit__", "every COMMIT (overlaps the above)"),
    ]
    split: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="mailflow-bench-") as tmp:
        app, incident, _ = prepared_incident(Path(tmp), sink.port, contacts_text, contacts,
                                             sink, n)
        try:
            with timed(spots, split):
                times = run_mailflow(app, incident, n)
            check(sink, n, "mailflow (timed split)")
        finally:
            app.close()
    print(f"\nwall-clock split of one mailflow phase ({times.total:.3f} s: render+queue "
          f"{times.queue:.3f} + deliver {times.deliver:.3f}):")
    for label, (calls, secs) in split.items():
        if calls:
            print(f"  {label:52s} {int(calls):6d} x {secs / calls * 1e3:8.3f} ms = {secs:6.3f} s")

    with tempfile.TemporaryDirectory(prefix="mailflow-bench-") as tmp:
        app, incident, _ = prepared_incident(Path(tmp), sink.port, contacts_text, contacts,
                                             sink, n)
        try:
            prof = cProfile.Profile()
            prof.enable()
            times = run_mailflow(app, incident, n)
            prof.disable()
            check(sink, n, "mailflow (profiled)")
            left = OutMessage.select().where(OutMessage.status != "sent").count()
            if left:
                raise SystemExit(f"{left} outbox rows not marked sent after the profiled run")
        finally:
            app.close()
    if dest != "-":
        prof.dump_stats(dest)
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("cumulative").print_stats(40)
    print(f"\ncProfile of one mailflow phase ({times.total:.3f} s under the profiler; the "
          "email package is inflated most, and coroutine times are split per resume):")
    print(out.getvalue())


if __name__ == "__main__":
    main()
