"""Adding recipients in bulk: same outcome as one by one, a few statements for many people."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import peewee

from mailflow import incidents as inc
from mailflow.app import Mailflow
from mailflow.config import load_config
from mailflow.models import OutMessage, Recipient
from mailflow.testing import write_config

from .conftest import T0

MANY = 400


def contacts_text() -> str:
    """MANY people on one list, half of them also on a second list the service notifies."""
    people = "\n".join(f"  - {{name: Person {i}, email: p{i}@example.org}}" for i in range(MANY))
    staff = "\n".join(f"    - p{i}@example.org" for i in range(MANY))
    half = "\n".join(f"    - P{i}@Example.org" for i in range(0, MANY, 2))
    return (f"people:\n{people}\n  - {{name: Ana Lima, email: ana@example.org}}\n"
            f"lists:\n  staff:\n{staff}\n  desk:\n{half}\n"
            "services:\n  learn:\n    title: Learn\n    notify: [staff, desk]\n"
            "    oncall: [ana@example.org]\n")


class _Cursor:
    """A cursor that notes each executemany (one statement for many rows) in `seen`."""

    def __init__(self, cursor: Any, seen: list[str]) -> None:
        self._cursor, self._seen = cursor, seen

    def executemany(self, sql: str, rows: Any) -> Any:
        self._seen.append(sql)
        return self._cursor.executemany(sql, rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


@contextmanager
def statements() -> Iterator[list[str]]:
    """The SQL peewee sends while inside, and the statements run with executemany."""
    seen: list[str] = []
    real, real_cursor = peewee.SqliteDatabase.execute_sql, peewee.SqliteDatabase.cursor

    def spy(self: Any, sql: str, *a: Any, **k: Any) -> Any:
        seen.append(sql)
        return real(self, sql, *a, **k)

    def cursor(self: Any, *a: Any, **k: Any) -> Any:
        return _Cursor(real_cursor(self, *a, **k), seen)

    peewee.SqliteDatabase.execute_sql = spy  # type: ignore[method-assign]
    peewee.SqliteDatabase.cursor = cursor  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        peewee.SqliteDatabase.execute_sql = real  # type: ignore[method-assign]
        peewee.SqliteDatabase.cursor = real_cursor  # type: ignore[method-assign]


def test_a_declaration_adds_everyone_once_with_the_first_reason(tmp_path: Path) -> None:
    (tmp_path / "contacts.yaml").write_text(contacts_text(), encoding="utf-8")
    app = Mailflow(load_config(write_config(tmp_path, None)))
    try:
        with statements() as sql:
            incident = inc.declare(app, T0, service="learn", severity="P1", impact="outage",
                                   summary="down", impacted=["p1@example.org", "new@example.org"],
                                   author="ana@example.org")
        rows = list(Recipient.select().where(Recipient.incident == incident)
                    .order_by(Recipient.id))
        assert [r.email for r in rows] == ["ana@example.org",
                                          *[f"p{i}@example.org" for i in range(MANY)],
                                          "new@example.org"]
        by_email = {r.email: r for r in rows}
        assert by_email["ana@example.org"].reason == "as the incident lead"
        # On both lists and impacted: the first reason is kept, the address normalised once.
        assert by_email["p0@example.org"].reason == \
            "because you are on the staff list for Learn"
        assert by_email["p1@example.org"].name == "Person 1"
        # Every list that brought them in is remembered, a role or impacted as "*".
        assert (by_email["p0@example.org"].via, by_email["p1@example.org"].via) == \
            ("staff,desk", "staff,*")
        assert by_email["ana@example.org"].via == "*"
        assert by_email["new@example.org"].reason == f"because you are impacted by {incident.ref}"
        assert by_email["new@example.org"].name == ""
        # Every one got the start email, and it is the root of their thread.
        starts = {m.recipient: m.message_id for m in OutMessage.select()}
        assert len(starts) == MANY + 2
        assert all(by_email[e].first_message_id == mid for e, mid in starts.items())
        # In bulk: not one INSERT (nor one lookup) per person. Everyone is added by one
        # statement, and the whole declaration runs a few dozen whatever the number of people.
        plain = [s.replace('"', "").lower() for s in sql]
        inserts = [s for s in plain if s.startswith("insert into recipient ")]
        assert len(inserts) == 1, inserts
        recipient_sql = [s for s in plain if re.search(r"\b(from|into|update) recipient\b", s)]
        assert 0 < len(recipient_sql) <= 10, len(recipient_sql)
        assert len(sql) <= 40, len(sql)
    finally:
        app.close()


def test_adding_again_keeps_the_row_and_revives_a_bounced_one(tmp_path: Path) -> None:
    (tmp_path / "contacts.yaml").write_text(contacts_text(), encoding="utf-8")
    app = Mailflow(load_config(write_config(tmp_path, None)))
    try:
        incident = inc.declare(app, T0, service="learn", severity="P1", impact="outage",
                               summary="down", author="ana@example.org")
        Recipient.update(status="bounced").where(Recipient.email == "p3@example.org").execute()
        before = Recipient.select().count()
        inc.add_recipients(app, incident, [("P3@example.org", "again", "staff"),
                                           ("p4@example.org", "again", "*"),
                                           ("late@example.org", "because I said so", "*")], T0)
        assert Recipient.select().count() == before + 1
        p3 = Recipient.get(Recipient.email == "p3@example.org")
        assert (p3.status, p3.reason) == ("active", "because you are on the staff list for Learn")
        assert Recipient.get(Recipient.email == "p4@example.org").via == "staff,desk,*"
        assert Recipient.get(Recipient.email == "late@example.org").reason == "because I said so"
    finally:
        app.close()
