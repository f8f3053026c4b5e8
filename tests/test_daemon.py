"""`mailflow serve` as a real process: replies in, updates out, SIGHUP, SIGTERM, sd_notify."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import weakref
from pathlib import Path

from mailflow.testing import Sink

from .conftest import T0, write_config
from .helpers import Process, send_reply, text_of, wait_for


def test_serve_end_to_end(tmp_path: Path, sink: Sink) -> None:
    write_config(tmp_path, sink.port)
    notify_path = str(tmp_path / "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(15)
    env = {"MAILFLOW_NOW": T0.isoformat(), "NOTIFY_SOCKET": notify_path}
    subprocess.run(
        [sys.executable, "-m", "mailflow.cli", "--config", str(tmp_path / "mailflow.toml"),
         "declare", "--service", "learn", "--severity", "P1", "--impact", "outage",
         "--summary", "Learn returns 502", "--lead", "ana@example.org", "--queue-only"],
        env={**os.environ, **env}, check=True, capture_output=True,
    )
    daemon = Process(tmp_path, env)
    try:
        assert notify.recv(4096).decode().startswith("READY=1")
        wait_for(lambda: len(sink.received) == 2, what="the queued start emails")
        reply_to = sink.received[0].message["Reply-To"]

        send_reply(daemon.port or 0, reply_to, "send now\n\nIndex rebuilt, app servers back")
        # Two updates, and a receipt to the sender of the command.
        wait_for(lambda: len(sink.received) == 5, what="the update sent at once")
        kinds = {r.message["X-Mailflow-Kind"]: r.message for r in sink.received[2:]}
        assert sorted(r.message["X-Mailflow-Kind"] for r in sink.received[2:]) == [
            "receipt", "update", "update"]
        update = kinds["update"]
        assert "Index rebuilt, app servers back" in text_of(update)

        # An edited contacts file is picked up without a signal: a new person may post.
        stranger = "zoe@example.org"
        assert send_reply(daemon.port or 0, reply_to, "before", sender=stranger) == 550
        contacts = tmp_path / "contacts.yaml"
        contacts.write_text(contacts.read_text().replace(
            "people:\n", "people:\n  - {name: Zoe Quinn, email: zoe@example.org}\n"))
        wait_for(lambda: daemon.logged("contacts file changed"), what="the file-change reload")
        assert send_reply(daemon.port or 0, reply_to, "Zoe can post now", sender=stranger) == 250

        # A broken contacts file on SIGHUP is refused; the daemon keeps the old one and serves.
        (tmp_path / "contacts.yaml").write_text("people: [\n", encoding="utf-8")
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: daemon.logged("reload refused"), what="the refused reload")
        assert any(re.search(r"contacts\.yaml:\d+:", line) for line in daemon.lines)
        assert send_reply(daemon.port or 0, reply_to, "still here") == 250
        assert daemon.proc.poll() is None

        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(15) == 0
        assert notify.recv(4096).decode().startswith("STOPPING=1")
    finally:
        daemon.close()
        notify.close()


def test_1100_idle_connections_keep_the_log_calm(tmp_path: Path, sink: Sink) -> None:
    write_config(tmp_path, sink.port)
    daemon = Process(tmp_path, {"MAILFLOW_NOW": T0.isoformat()}, open_files=1024)
    clients = []
    try:
        port = daemon.port or 0
        for _ in range(1100):  # non-blocking: the test never waits on a full backlog
            client = socket.socket()
            client.setblocking(False)
            client.connect_ex(("127.0.0.1", port))
            clients.append(client)
        wait_for(lambda: daemon.logged("max_connections (100)"), what="the refusal line")
        for client in clients:
            client.close()

        def served() -> bool:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                return sock.makefile("rb").readline().startswith(b"220")
        wait_for(served, what="the slots to be given back")
        assert send_reply(port, "incidents@example.org", "hello", sender="zoe@example.org") == 550
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(15) == 0
    finally:
        daemon.close()
    assert not any("Traceback" in line for line in daemon.lines), daemon.lines[:20]
    assert len(daemon.lines) < 20, daemon.lines


class _Holder:
    """Something a weak reference can follow, kept alive only by a cycle."""

    def __init__(self, cycle: list[object]) -> None:
        self.cycle = cycle
        cycle.append(self)


def test_settle_heap_takes_what_start_up_built_out_of_the_collector() -> None:
    # A full collection walked start-up's ~70,000 objects under load (60 ms pauses: the
    # slowest replies' answers); frozen, they are not walked again.
    import gc

    from mailflow.daemon import settle_heap

    built_at_start_up = [object() for _ in range(10)]
    cycle: list[object] = []  # as the config and templates a reload later replaces hold
    replaced = weakref.ref(_Holder(cycle))
    try:
        settle_heap()
        tracked = {id(o) for o in gc.get_objects()}
        assert gc.get_freeze_count() >= len(built_at_start_up)
        assert id(built_at_start_up) not in tracked and id(cycle) not in tracked
        later = [object()]
        assert id(later) in {id(o) for o in gc.get_objects()}
        # A reload drops the old objects and settles again: they are thawed and collected,
        # not kept frozen for the life of the process.
        del cycle
        gc.collect()
        assert replaced() is not None  # frozen: no collection reaches it
        settle_heap()
        assert replaced() is None
    finally:
        gc.unfreeze()
