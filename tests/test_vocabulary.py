"""Statuses and timeline kinds are named values: a typo fails, the stored shape stays text."""

import sqlite3
from datetime import datetime, timezone

import pytest

from mailflow import incidents as inc
from mailflow.app import Mailflow
from mailflow.models import LIVE, EntryKind, Incident, Status

from .helpers import declare_incident

NOW = datetime(2026, 11, 24, 10, 0, tzinfo=timezone.utc)


def test_a_misspelt_timeline_kind_is_refused(app: Mailflow) -> None:
    incident = declare_incident(app)
    with pytest.raises(ValueError, match="updat"):
        inc.log(incident, NOW, "updat", "typo")
    entry = inc.log(incident, NOW, EntryKind.NOTE, "kept")
    assert entry.kind == "note"


def test_statuses_are_stored_as_plain_text(app: Mailflow) -> None:
    incident = declare_incident(app)
    assert incident.status == Status.OPEN == "open" and incident.is_open
    inc.resolve(app, incident, NOW, "Rebuilt the index", "ana@example.org")
    db = sqlite3.connect(app.config.database)
    try:
        (stored,) = db.execute("SELECT status FROM incident WHERE id = ?", (incident.id,)).fetchone()
    finally:
        db.close()
    assert stored == "resolved" and type(stored) is str
    assert Incident.get_by_id(incident.id).status == Status.RESOLVED
    assert Status.RESOLVED not in LIVE and Status.FOLLOW_UP in LIVE
