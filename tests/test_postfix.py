"""The README's Postfix recipe, run: replies relayed to the daemon, forged tokens refused at RCPT."""

from __future__ import annotations

import os
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailflow.testing import Sink

from .conftest import T0, write_config
from .helpers import Process, send_reply, text_of, wait_for
from .postfix import Postfix

ADDRESS = "incidents@incidents.example.org"


@pytest.fixture
def daemon(tmp_path: Path, sink: Sink) -> Iterator[Process]:
    """`mailflow serve` with replies at incidents.example.org, one incident declared."""
    path = write_config(tmp_path, sink.port)
    path.write_text(path.read_text().replace(
        'reply_to = "incidents@example.org"', f'reply_to = "{ADDRESS}"'))
    env = {"MAILFLOW_NOW": T0.isoformat()}
    subprocess.run(
        [sys.executable, "-m", "mailflow.cli", "--config", str(path),
         "declare", "--service", "learn", "--severity", "P1", "--impact", "outage",
         "--summary", "Learn returns 502", "--lead", "ana@example.org", "--queue-only"],
        env={**os.environ, **env}, check=True, capture_output=True)
    process = Process(tmp_path, env)
    yield process
    process.close()


@pytest.fixture
def postfix(daemon: Process) -> Iterator[Postfix]:
    server = Postfix(daemon.port or 0)
    server.start()
    yield server
    server.stop()


def test_reply_through_postfix_is_posted_and_forged_token_refused_at_rcpt(
        daemon: Process, postfix: Postfix, sink: Sink) -> None:
    wait_for(lambda: len(sink.received) == 2, what="the queued start emails")
    reply_to = sink.received[0].message["Reply-To"]
    assert reply_to.endswith("@incidents.example.org")

    # Postfix is slower to answer than the daemon: a longer timeout than the default.
    assert send_reply(postfix.port, reply_to, "send now\n\nIndex rebuilt, app servers back",
                      timeout=30) == 250
    wait_for(lambda: any(r.message["X-Mailflow-Kind"] == "update" for r in sink.received),
             timeout=30, what="the update posted from the reply relayed by Postfix")
    update = next(r.message for r in sink.received if r.message["X-Mailflow-Kind"] == "update")
    assert "Index rebuilt, app servers back" in text_of(update)

    local, domain = reply_to.split("@")
    forged = local[:-4] + ("AAAA" if not local.endswith("AAAA") else "BBBB") + "@" + domain
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        send_reply(postfix.port, forged, "forged", timeout=30)
    code, text = refused.value.recipients[forged]
    assert code == 550, text
    assert b"not a valid incident reply address" in text

    # Refused in the dialogue: nothing was queued, so no bounce can ever be sent.
    postfix.settle()
    assert postfix.queue() == []
    for queue in ("deferred", "bounce", "defer"):
        assert [f for f in (postfix.dir / "queue" / queue).rglob("*") if f.is_file()] == []
    assert "status=bounced" not in postfix.log()
    assert daemon.logged("refused: not a valid incident address")


def test_readme_shows_the_tested_recipe_verbatim() -> None:
    root = Path(__file__).resolve().parent.parent
    recipe = (root / "contrib" / "postfix" / "main.cf").read_text(encoding="utf-8")
    assert recipe.rstrip() in (root / "README.md").read_text(encoding="utf-8")
