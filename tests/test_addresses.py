"""One address check everywhere: contacts check, the CLI, declare and escalations accept
exactly what delivery accepts."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from mailflow import incidents as inc
from mailflow.addresses import STRICT, Rules, check, normalise, problem
from mailflow.app import Mailflow
from mailflow.cli import cli
from mailflow.config import load_config
from mailflow.contacts import parse_contacts
from mailflow.errors import InvalidInput
from mailflow.models import Entry
from mailflow.scheduler import run_due
from mailflow.testing import CONTACTS, Sink, write_config

from .conftest import T0

REFUSED = ["a..b@example.org", ".a@example.org", "a.@example.org", "ops:team@example.org",
           "it(desk)@example.org", "böb@example.org", "ana@localhost", "x@-bad-.org",
           "x@[192.0.2.1]", "a b@example.org", "two@@example.org"]


@pytest.mark.parametrize("address", REFUSED)
def test_what_delivery_refuses_is_refused_with_a_reason(address: str) -> None:
    assert problem(address) is not None
    with pytest.raises(InvalidInput, match="is not an email address: "):
        check(address, "lead")


def test_normal_form() -> None:
    assert normalise("Ana Lima <Ana@Example.ORG>") == "ana@example.org"
    assert normalise("mailto:bob@example.org") == "bob@example.org"
    assert normalise(" <chloe@example.org> ") == "chloe@example.org"
    assert normalise("not an address") == ""
    assert check("Ana <ana@example.org>") == "ana@example.org"


def test_config_switches_what_is_allowed() -> None:
    local = Rules(allow_local_domains=True)
    assert "allow_local_domains = true" in problem("ana@localhost", STRICT)
    assert problem("ana@localhost", local) is None
    assert "smtputf8 = true" in problem("böb@example.org", STRICT)
    assert problem("böb@example.org", Rules(smtputf8=True)) is None
    assert problem("a..b@example.org", Rules(True, True)) is not None, "never deliverable"


def contacts_check(folder: Path) -> tuple[int, str]:
    env = {"MAILFLOW_CONFIG": str(folder / "mailflow.toml")}
    result = CliRunner().invoke(cli, ["contacts", "check"], env=env)
    return result.exit_code, result.output


@pytest.mark.parametrize("address", ["a..b@example.org", "ops:team@example.org",
                                     "it(desk)@example.org", ".a@example.org", "a.@example.org",
                                     "böb@example.org", "ana@localhost"])
def test_contacts_check_refuses_what_delivery_would(tmp_path: Path, address: str) -> None:
    write_config(tmp_path, None)
    text = CONTACTS.replace("dan@example.org}", f"dan@example.org}}\n  - {{name: X, email: "
                            f"'{address}'}}")
    text = text.replace("management: [dan@example.org]", f"management: [dan@example.org, "
                        f"'{address}']")
    (tmp_path / "contacts.yaml").write_text(text, encoding="utf-8")
    code, output = contacts_check(tmp_path)
    assert code == 1, output
    assert f"{address!r} is not a valid email address" in output
    assert output.count("is not a valid email address") == 2, "the person and the list entry"


def test_contacts_check_allows_local_domains_when_configured(tmp_path: Path) -> None:
    write_config(tmp_path, None, extra="allow_local_domains = true")
    (tmp_path / "contacts.yaml").write_text(
        CONTACTS.replace("dan@example.org", "dan@localhost"), encoding="utf-8")
    code, output = contacts_check(tmp_path)
    assert code == 0, output
    app = Mailflow(load_config(tmp_path / "mailflow.toml"))
    try:  # and delivery agrees: a declaration that names the local address goes through
        incident = inc.declare(app, T0, service="learn", severity="P1", impact="outage",
                               summary="Down", lead="dan@localhost", author="dan@localhost")
        assert incident.lead == "dan@localhost"
    finally:
        app.close()


def test_declare_refuses_a_bad_lead_with_the_reason(tmp_path: Path) -> None:
    write_config(tmp_path, None)
    app = Mailflow(load_config(tmp_path / "mailflow.toml"))
    try:
        with pytest.raises(InvalidInput, match=r"lead 'ana\.\.lima@example\.org' is not an "
                                               r"email address: a dot"):
            inc.declare(app, T0, service="learn", severity="P1", impact="outage",
                        summary="Down", lead="ana..lima@example.org", author="ana@example.org")
    finally:
        app.close()


def test_escalation_reaches_the_valid_manager_despite_a_bad_address(tmp_path: Path,
                                                                    sink: Sink) -> None:
    write_config(tmp_path, sink.port)
    # A directory read with looser rules than delivery's (say, edited under another
    # configuration): one address on the management list cannot be delivered.
    contacts = parse_contacts(CONTACTS.replace("management: [dan@example.org]",
                                               "management: [ops@localhost, dan@example.org]"),
                              tmp_path / "contacts.yaml", Rules(allow_local_domains=True))
    app = Mailflow(load_config(tmp_path / "mailflow.toml"), contacts=contacts)
    try:
        incident = inc.declare(app, T0, service="learn", severity="P1", impact="outage",
                               summary="Down", lead="ana@example.org", author="ana@example.org")
        app.deliver_now(T0)
        sink.clear()
        run_due(app, T0 + timedelta(hours=4, minutes=1))
        app.deliver_now(T0 + timedelta(hours=4, minutes=1))
        reached = {r.rcpt_tos[0] for r in sink.received
                   if r.message["X-Mailflow-Kind"] == "escalation"}
        assert "dan@example.org" in reached
        warnings = [e.text for e in Entry.select().where((Entry.incident == incident)
                                                          & (Entry.kind == "warning"))]
        assert any("ops@localhost" in w and "allow_local_domains" in w for w in warnings)
        sink.clear()  # done: the escalation is not retried
        run_due(app, T0 + timedelta(hours=4, minutes=10))
        app.deliver_now(T0 + timedelta(hours=4, minutes=10))
        assert not [r for r in sink.received if r.message["X-Mailflow-Kind"] == "escalation"]
    finally:
        app.close()
