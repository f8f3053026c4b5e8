"""Shared fixtures: a real SMTP sink on loopback, a project folder, a fixed clock."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from mailflow.app import Mailflow
from mailflow.config import load_config
from mailflow.testing import Sink

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 11, 24, 10, 0, tzinfo=timezone.utc)

CONTACTS = """\
# Test directory: a comment that edits must keep.
people:
  - {name: Ana Lima, email: ana@example.org, expertise: [postgres, backups], timezone: Europe/Zurich}
  - {name: Bob Stone, email: bob@example.org, expertise: [moodle], timezone: America/New_York}
  - {name: Chloe Martin, email: chloe@example.org, expertise: [moodle, postgres, nginx]}
  - {name: Dan Boss, email: dan@example.org}
  - {name: Eve Chief, email: eve@example.org}
lists:
  stakeholders: [ana@example.org, ops-team@example.org]
  management: [dan@example.org]
  upper-management: [eve@example.org]
services:
  learn:
    title: ISC Learn Platform
    notify: [stakeholders]
    escalate: {4h: [management], 1d: [upper-management]}
    expertise: [moodle, postgres]
"""


@pytest.fixture
def sink() -> Iterator[Sink]:
    """An aiosmtpd server on a free loopback port that records what it receives."""
    with Sink() as s:
        yield s


def write_config(folder: Path, port: int | None, extra: str = "") -> Path:
    """A mailflow.toml in `folder` sending to 127.0.0.1:port (Maildir when port is None)."""
    outbound = (f'[outbound]\nhost = "127.0.0.1"\nport = {port}\nstarttls = false\n'
                if port else "")
    path = folder / "mailflow.toml"
    path.write_text(
        'database = "state/mailflow.db"\ncontacts = "contacts.yaml"\n'
        'from = "Incident Desk <incidents@example.org>"\nreply_to = "incidents@example.org"\n'
        f'secret = "test-secret"\n{extra}\n{outbound}',
        encoding="utf-8",
    )
    if not (folder / "contacts.yaml").exists():
        (folder / "contacts.yaml").write_text(CONTACTS, encoding="utf-8")
    return path


@pytest.fixture
def project(tmp_path: Path, sink: Sink) -> Path:
    """A folder with mailflow.toml (relay = the sink) and the example contacts.yaml."""
    write_config(tmp_path, sink.port)
    return tmp_path


@pytest.fixture
def app(project: Path) -> Iterator[Mailflow]:
    """The application on the project folder, its database a real SQLite file."""
    application = Mailflow(load_config(project / "mailflow.toml"))
    yield application
    application.close()
