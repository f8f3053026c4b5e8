"""Shared fixtures: a real SMTP sink on loopback, a project folder, a fixed clock."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from mailflow.app import Mailflow
from mailflow.config import load_config
from mailflow.testing import CONTACTS, Sink, write_config

__all__ = ["CONTACTS", "T0", "write_config"]

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 11, 24, 10, 0, tzinfo=timezone.utc)


@pytest.fixture
def sink() -> Iterator[Sink]:
    """An aiosmtpd server on a free loopback port that records what it receives."""
    with Sink() as s:
        yield s


@pytest.fixture
def backend() -> str:
    """The database the `project` uses; modules that run on both override it with params.
    MAILFLOW_TEST_BACKEND=postgresql runs the rest on PostgreSQL too (by hand)."""
    return os.environ.get("MAILFLOW_TEST_BACKEND", "sqlite")


@pytest.fixture
def project(tmp_path: Path, sink: Sink, backend: str, request: pytest.FixtureRequest) -> Path:
    """A folder with mailflow.toml (relay = the sink) and the example contacts.yaml; its
    database a SQLite file, or a fresh PostgreSQL database when `backend` is postgresql."""
    database = request.getfixturevalue("pg_url") if backend == "postgresql" \
        else "state/mailflow.db"
    write_config(tmp_path, sink.port, database=database)
    return tmp_path


@pytest.fixture
def app(project: Path) -> Iterator[Mailflow]:
    """The application on the project folder, its database a real SQLite file."""
    application = Mailflow(load_config(project / "mailflow.toml"))
    yield application
    application.close()


@pytest.fixture
def announced(app: Mailflow, sink: Sink) -> Any:
    """INC-1 declared (see helpers.declare), its start notification delivered, the sink empty."""
    from .helpers import declare

    created = declare(app)
    app.deliver_now(T0)
    sink.clear()
    return created


@pytest.fixture
def inbound(app: Mailflow) -> Iterator[Any]:
    """mailflow's inbound handler on a free loopback port, 64 KiB DATA limit, clock at NOW."""
    from .helpers import Inbound  # helpers imports this module: imported late

    server = Inbound(app)
    server.server.start()
    yield server
    server.server.stop()


@pytest.fixture
def dovecot() -> Iterator[object]:
    """A real Dovecot IMAP server on a free loopback port, its config in a temp dir."""
    from .dovecot import Dovecot

    server = Dovecot()
    server.start()
    yield server
    server.close()


BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """A real PostgreSQL server for the whole session, data in a temp dir, loopback port."""
    from .postgres import Postgres

    server = Postgres()
    server.start()
    yield server
    server.close()


@pytest.fixture
def pg_url(postgres_server: Any) -> str:
    """The URL of a new, empty PostgreSQL database for this test."""
    return str(postgres_server.fresh())
