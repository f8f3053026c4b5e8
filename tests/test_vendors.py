"""Vendors: the service's third-party support contacts (how to open a ticket, how to escalate)
are in its escalation emails next to the internal experts; read back from the SMTP sink."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from mailflow.app import Mailflow
from mailflow.config import load_config
from mailflow.contacts import parse_contacts
from mailflow.errors import ContactsError
from mailflow.scheduler import tick
from mailflow.testing import CONTACTS, Sink

from .conftest import T0, write_config
from .helpers import declare, html_of, text_of

VENDORS = """\
vendors:
  - name: Moodle Partners AG
    services: [learn]
    ticket: support@moodle-partners.example
    escalate: call +41 44 555 01 00 and ask for the <duty> manager
  - {name: Other Corp, services: [api], ticket: https://other.example/new}
"""
API = "  api:\n    title: Public API\n    notify: [stakeholders]\n"


@pytest.fixture
def app(tmp_path: Path, sink: Sink) -> Iterator[Mailflow]:
    (tmp_path / "contacts.yaml").write_text(CONTACTS + API + VENDORS, encoding="utf-8")
    write_config(tmp_path, sink.port)
    application = Mailflow(load_config(tmp_path / "mailflow.toml"))
    yield application
    application.close()


def test_escalation_lists_the_services_vendors_next_to_the_experts(app: Mailflow,
                                                                   sink: Sink) -> None:
    declare(app, impacted=[])
    tick(app, T0)
    sink.clear()
    tick(app, T0 + timedelta(hours=4))
    [mail] = [r.message for r in sink.received
              if r.message["X-Mailflow-Kind"] == "escalation" and r.rcpt_tos == ["dan@example.org"]]
    text = text_of(mail)
    assert "see the experts and vendors below" in text
    vendors = text.split("Vendor support:")[1].split("Latest state:")[0]
    assert "Moodle Partners AG" in vendors
    assert "Open a ticket: support@moodle-partners.example" in vendors
    assert "Escalate: call +41 44 555 01 00 and ask for the <duty> manager" in vendors
    assert "Other Corp" not in text, "only the vendors of the incident's service"
    assert text.index("Who can help:") < text.index("Vendor support:")
    html = html_of(mail)
    assert "Moodle Partners AG" in html and "&lt;duty&gt;" in html and "<duty>" not in html


def test_no_vendors_no_section(tmp_path: Path, sink: Sink) -> None:
    write_config(tmp_path, sink.port)
    app = Mailflow(load_config(tmp_path / "mailflow.toml"))
    try:
        declare(app, impacted=[])
        tick(app, T0 + timedelta(hours=4))
        mail = next(r.message for r in sink.received
                    if r.message["X-Mailflow-Kind"] == "escalation")
        assert "Vendor support" not in text_of(mail) and "Vendor support" not in html_of(mail)
        assert "see the experts below" in text_of(mail)
    finally:
        app.close()


@pytest.mark.parametrize(("vendors", "says"), [
    ("vendors:\n  - {name: X, services: [nope], ticket: t}\n", "{item}: vendor 'X': unknown "
     "service 'nope' (known services: api, learn)"),
    ("vendors:\n  - {name: X, services: [learn]}\n", "{item}: vendor 'X': say how to open a "
     "ticket (`ticket:`) or how to escalate (`escalate:`), or both"),
    ("vendors:\n  - {name: X, ticket: t}\n", "{item}: vendor 'X' has no `services:`"),
    ("vendors:\n  - {name: X, services: [learn], phone: 1}\n", "{item}: unknown key 'phone' "
     "for a vendor"),
    ("vendors: {X: y}\n", "{head}: `vendors:` must be a list of vendors"),
])
def test_bad_vendors_are_refused_with_line_and_fix(vendors: str, says: str) -> None:
    with pytest.raises(ContactsError) as caught:
        parse_contacts(CONTACTS + API + vendors, "contacts.yaml")
    head = len((CONTACTS + API).splitlines()) + 1  # the `vendors:` line, then its item
    assert says.format(head=f":{head}", item=f":{head + 1}") in str(caught.value)
