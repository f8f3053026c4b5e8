"""contacts.yaml: validation with file:line, lookups, and round-trip edits on real files."""

from __future__ import annotations

import difflib
import os
import shutil
import stat
import tempfile
import unicodedata
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailflow.contacts import (
    Contacts,
    ContactsFile,
    Person,
    empty_contacts,
    is_address,
    load_contacts,
    parse_contacts,
)
from mailflow.errors import ContactsError, NotFound

EXAMPLE = Path(__file__).resolve().parent.parent / "templates" / "contacts.yaml"

# Comments, blank lines, odd spacing, quotes, block and flow lists: everything an edit
# must leave alone.
HAND_WRITTEN = """\
# Our directory -- keep it sorted by team.

people:
  # on-call rotation
  - {name: Ana Lima, email: ana@example.org, expertise: [postgres, backups], timezone: Europe/Rome}
  - {name: "Ben Okafor",   email: BEN@example.org, expertise: [moodle]}   # back in May
  - name: Chloé Martin
    email: chloe@example.org
    expertise:
      - moodle
      - postgres

lists:
  stakeholders:
    - ana@example.org     # lead
    - ben@example.org
    - ops-team@example.org
  management: [eva@example.org]   # head of IT
  upper-management:
    - frank@example.org

services:
  learn:
    title: ISC Learn Platform
    notify: [stakeholders]
    escalate: {4h: [management], 1d: [upper-management]}
    expertise: [moodle, postgres]
  api:
    notify: [stakeholders, management]
# trailing comment
"""


def write(tmp_path: Path, text: str, name: str = "contacts.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


def line_changes(before: str, after: str) -> tuple[list[str], list[str]]:
    """(removed lines, added lines); fails if any other line changed or moved."""
    old, new = before.splitlines(keepends=True), after.splitlines(keepends=True)
    removed: list[str] = []
    added: list[str] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(
        None, old, new, autojunk=False
    ).get_opcodes():
        if tag in ("delete", "replace"):
            removed += old[i1:i2]
        if tag in ("insert", "replace"):
            added += new[j1:j2]
    # What is left after taking out the edited lines must be identical, byte for byte.
    assert [ln for ln in old if ln not in removed] == [ln for ln in new if ln not in added]
    return removed, added


# --- the example file ------------------------------------------------------------------------


def test_example_file_loads_and_is_usable() -> None:
    contacts = load_contacts(EXAMPLE)
    assert contacts.path == EXAMPLE
    learn = contacts.service("learn")
    assert learn.title == "ISC Learn Platform"
    assert {"stakeholders", "management", "upper-management"} <= set(contacts.lists)
    assert dict(learn.escalate) == {timedelta(hours=4): ("management",),
                                    timedelta(days=1): ("upper-management",)}
    assert contacts.expand(learn.notify)
    assert contacts.experts(learn.expertise)
    assert "api" in contacts.services
    assert all(p.email.endswith("@example.org") for p in contacts.people.values())
    assert any(p.timezone for p in contacts.people.values())


def test_example_file_can_be_edited(tmp_path: Path) -> None:
    path = tmp_path / "contacts.yaml"
    shutil.copy(EXAMPLE, path)
    editor = ContactsFile(path)
    editor.add_person("Gus Weber", "gus@example.org", ["dns"], "UTC", ["management"])
    contacts = editor.save()
    assert contacts.person("gus@example.org") == Person(
        "Gus Weber", "gus@example.org", ("dns",), "UTC"
    )
    assert "gus@example.org" in contacts.expand(["management"])


# --- validation: each error names its line ---------------------------------------------------

LISTS = "lists:\n  s: [a@example.org]\n  m: [b@example.org]\n"  # lines 1-3

INVALID = [
    pytest.param(
        "people:\n  - {name: A, email: a@example.org\nlists: {}\n",
        3,
        "YAML syntax error",
        id="yaml",
    ),
    pytest.param("people:\n\t- {name: A}\n", 2, "YAML syntax error", id="tab"),
    pytest.param("# directory\n- a@example.org\n", 2, "top level must be a mapping", id="top-list"),
    pytest.param("hello\n", 1, "top level must be a mapping", id="top-scalar"),
    pytest.param("people: []\nstaff: []\n", 2, "unknown key 'staff'", id="top-unknown"),
    pytest.param("people: []\npeople: []\n", 2, "duplicate key 'people'", id="duplicate-key"),
    pytest.param("people: {name: A}\n", 1, "`people:` must be a list", id="people-mapping"),
    pytest.param(
        "people:\n  - {name: A, email: a@example.org}\n  - ana@example.org\n",
        3,
        "each person must be a mapping",
        id="person-scalar",
    ),
    pytest.param("people:\n  - {email: a@example.org}\n", 2, "has no `name:`", id="no-name"),
    pytest.param("people:\n  - name: Ana\n    timezone: UTC\n", 2, "no `email:`", id="no-email"),
    pytest.param(
        "people:\n  - {name: , email: a@example.org}\n", 2, "name is empty", id="empty-name"
    ),
    pytest.param(
        "people:\n  - {name: 2024, email: a@example.org}\n", 2, "must be text", id="name-number"
    ),
    pytest.param(
        'people:\n  - {name: "A\\nBcc: x", email: a@example.org}\n',
        2,
        "line break",
        id="name-newline",
    ),
    pytest.param("people:\n  - {name: A, email: a.example.org}\n", 2, "not a valid", id="no-at"),
    pytest.param("people:\n  - {name: A, email: a@b@example.org}\n", 2, "not a valid", id="two-at"),
    pytest.param("people:\n  - {name: A, email: a@localhost}\n", 2, "not a valid", id="no-dot"),
    pytest.param(
        "people:\n  - {name: A, email: '@example.org'}\n", 2, "not a valid", id="no-local"
    ),
    pytest.param(
        "people:\n  - {name: A, email: 'a b@example.org'}\n", 2, "not a valid", id="space"
    ),
    pytest.param(
        "people:\n  - {name: A, email: '<a@example.org>'}\n", 2, "not a valid", id="angle"
    ),
    pytest.param(
        'people:\n  - {name: A, email: "a@example.org\\r\\nBcc: x@example.org"}\n',
        2,
        "not a valid",
        id="crlf",
    ),
    pytest.param(
        "people:\n"
        "  - {name: Ana, email: ana@example.org}\n"
        "  - {name: Ben, email: ben@example.org}\n"
        "  - {name: Impostor, email: ANA@Example.org}\n",
        4,
        "duplicate email ANA@Example.org (already used by Ana at line 2)",
        id="duplicate-email",
    ),
    pytest.param(
        "people:\n  - name: Ana\n    email: ana@example.org\n    timezone: Europe/Zurch\n",
        4,
        "unknown time zone 'Europe/Zurch'",
        id="timezone",
    ),
    pytest.param(
        "people:\n  - {name: A, email: a@example.org, timezone: ../../etc/passwd}\n",
        2,
        "unknown time zone",
        id="timezone-path",
    ),
    pytest.param(
        "people:\n  - {name: A, email: a@example.org, expertise: postgres}\n",
        2,
        "expertise must be a list",
        id="expertise-scalar",
    ),
    pytest.param(
        "people:\n  - name: A\n    email: a@example.org\n"
        "    expertise:\n      - dns\n      - [x]\n",
        6,
        "expertise must be a list of text",
        id="expertise-nested",
    ),
    pytest.param(
        "people:\n  - {name: A, email: a@example.org, phone: 123}\n",
        2,
        "unknown key 'phone' for a person",
        id="person-unknown-key",
    ),
    pytest.param("lists: [a@example.org]\n", 1, "`lists:` must map", id="lists-seq"),
    pytest.param(
        "lists:\n  s: a@example.org\n", 2, "list 's' must be a list of addresses", id="list-scalar"
    ),
    pytest.param(
        "lists:\n  s: {a: b}\n", 2, "list 's' must be a list of addresses", id="list-mapping"
    ),
    pytest.param(
        "lists:\n  s:\n    - a@example.org\n    - Ana <ana@example.org>\n",
        4,
        "list 's': 'Ana <ana@example.org>' is not a valid email address",
        id="list-entry",
    ),
    pytest.param(
        "lists:\n  s:\n    - a@example.org\n    - [b@example.org]\n",
        4,
        "each entry must be an address",
        id="list-entry-nested",
    ),
    pytest.param(
        LISTS + "services:\n  learn:\n    notify: [s, stakeholders]\n",
        6,
        "unknown list 'stakeholders' (known lists: m, s)",
        id="notify-unknown",
    ),
    pytest.param(
        LISTS
        + "services:\n  learn:\n    notify: [s]\n    escalate:\n      4h: [m]\n      1d: [boss]\n",
        9,
        "escalate 1d: unknown list 'boss'",
        id="escalate-unknown",
    ),
    pytest.param(
        LISTS + "services:\n  learn:\n    title: Learn\n", 5, "has no `notify:`", id="no-notify"
    ),
    pytest.param(
        LISTS + "services:\n  learn:\n    notify: []\n", 6, "names no lists", id="empty-notify"
    ),
    pytest.param(
        LISTS + "services:\n  learn:\n    notify:\n", 6, "names no lists", id="null-notify"
    ),
    pytest.param(
        LISTS + "services:\n  learn:\n    notify: s\n", 6, "must be a list", id="notify-scalar"
    ),
    pytest.param(
        LISTS
        + "services:\n  learn:\n    notify: [s]\n    escalate:\n      4h: [m]\n      soon: [m]\n",
        9,
        "bad escalation threshold 'soon'",
        id="threshold",
    ),
    pytest.param(
        LISTS + "services:\n  learn:\n    notify: [s]\n    escalate: {4h: [m], 240m: [s]}\n",
        7,
        "threshold '240m' repeats line 7",
        id="threshold-repeat",
    ),
    pytest.param(
        LISTS + "services:\n  learn:\n    notify: [s]\n    escalate: [m]\n",
        7,
        "escalate must map a time to lists",
        id="escalate-list",
    ),
    pytest.param(
        LISTS + "services:\n  learn:\n    notify: [s]\n    owner: ana\n",
        7,
        "unknown key 'owner' for service 'learn'",
        id="service-unknown-key",
    ),
    pytest.param(LISTS + "services:\n  learn: yes\n", 5, "must be a mapping", id="service-scalar"),
    pytest.param("people:\n  - {name: A, email: a@example.org, x: \x01}\n", 2, "U+0001", id="ctrl"),
]


@pytest.mark.parametrize(("text", "line", "reason"), INVALID)
def test_invalid_file_names_line_and_reason(
    tmp_path: Path, text: str, line: int, reason: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ContactsError) as caught:
        load_contacts(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert reason in message.splitlines()[0]


def test_all_problems_are_reported_one_per_line_in_file_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "lists:\n"
        "  s: [not-an-address]\n"
        "people:\n"
        "  - {name: A, email: a@example.org, timezone: Nowhere/City}\n"
        "  - {email: b@example.org}\n",
    )
    with pytest.raises(ContactsError) as caught:
        load_contacts(path)
    lines = str(caught.value).splitlines()
    assert [ln.split(": ", 1)[0] for ln in lines] == [f"{path}:2", f"{path}:4", f"{path}:5"]


def test_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "contacts.yaml"
    path.write_bytes(b"people:\n  - {name: Z\xe9, email: z@example.org}\n")
    with pytest.raises(ContactsError, match=r"contacts\.yaml:2: not UTF-8"):
        load_contacts(path)


def test_missing_file_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ContactsError) as caught:
        load_contacts(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert "mailflow init" in str(caught.value)


def test_unreadable_path_is_a_contacts_error(tmp_path: Path) -> None:
    with pytest.raises(ContactsError, match="cannot read"):
        load_contacts(tmp_path)  # a directory


def test_empty_file_and_empty_sections_mean_nobody(tmp_path: Path) -> None:
    assert load_contacts(write(tmp_path, "# nobody yet\n")).people == {}
    contacts = load_contacts(write(tmp_path, "people:\nlists:\n  s:\nservices:\n"))
    assert contacts.lists == {"s": ()}
    assert contacts.people == {} and contacts.services == {}


def test_aliases_are_followed(tmp_path: Path) -> None:
    contacts = load_contacts(write(tmp_path, "lists:\n  a: &x [a@example.org]\n  b: *x\n"))
    assert contacts.lists["b"] == ("a@example.org",)


def test_title_defaults_to_key_and_escalation_is_sorted() -> None:
    contacts = parse_contacts(
        LISTS
        + "services:\n  web:\n    notify: [s]\n    escalate: {1d: [m], 30m: [s], 4h: [m, s]}\n"
    )
    web = contacts.service("web")
    assert web.title == "web"
    assert web.escalate == (
        (timedelta(minutes=30), ("s",)),
        (timedelta(hours=4), ("m", "s")),
        (timedelta(days=1), ("m",)),
    )
    assert web.expertise == ()


TOKENS = list("ab:@.-[]{},#&*!|>'\"\n \t%?~") + [
    "people",
    "lists",
    "services",
    "name",
    "email",
    "expertise",
    "timezone",
    "title",
    "notify",
    "escalate",
    "4h",
    "1d",
    "UTC",
    "a@example.org",
    "\n  ",
    "\n    - ",
    ": ",
    "- ",
    "\r\n",
]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=60).map("".join))
def test_any_text_is_contacts_or_a_located_error(text: str) -> None:
    try:
        parse_contacts(text, "f.yaml")
    except ContactsError as exc:
        for line in str(exc).splitlines():
            head, _, reason = line.partition(": ")
            assert head.startswith("f.yaml:") and head[len("f.yaml:") :].isdigit(), line
            assert reason


# --- lookups ---------------------------------------------------------------------------------


@pytest.fixture
def contacts(tmp_path: Path) -> Contacts:
    return load_contacts(write(tmp_path, HAND_WRITTEN))


def test_person_lookup_ignores_case_and_display_name(contacts: Contacts) -> None:
    ben = contacts.person("ben@example.org")
    assert ben is not None and ben.email == "BEN@example.org" and ben.name == "Ben Okafor"
    assert contacts.person('"Ana L." <ANA@Example.ORG>') == contacts.people["ana@example.org"]
    assert contacts.person("nobody@example.org") is None
    assert set(contacts.people) == {"ana@example.org", "ben@example.org", "chloe@example.org"}


def test_knows_people_and_list_addresses(contacts: Contacts) -> None:
    assert contacts.knows("Chloe@example.org")
    assert contacts.knows("Ops <OPS-TEAM@example.org>")  # only on a list
    assert not contacts.knows("mallory@example.org")


def test_expand_dedupes_ignoring_case_and_keeps_order(tmp_path: Path) -> None:
    contacts = load_contacts(
        write(
            tmp_path,
            "lists:\n"
            "  a: [x@example.org, Y@example.org, x@example.org]\n"
            "  b: [y@example.org, z@example.org]\n"
            "  c: []\n",
        )
    )
    assert contacts.expand(["a", "b", "c"]) == ["x@example.org", "Y@example.org", "z@example.org"]
    assert contacts.expand(["b", "a"]) == ["y@example.org", "z@example.org", "x@example.org"]
    assert contacts.expand("b") == ["y@example.org", "z@example.org"]
    assert contacts.expand([]) == []


def test_expand_unknown_list(contacts: Contacts) -> None:
    with pytest.raises(ContactsError) as caught:
        contacts.expand(["stakeholders", "board"])
    message = str(caught.value)
    assert message.startswith(f"{contacts.path}:13: no list named 'board'")
    assert "stakeholders, management, upper-management" in message


def test_experts_most_matches_first_then_name(tmp_path: Path) -> None:
    contacts = load_contacts(
        write(
            tmp_path,
            "people:\n"
            "  - {name: Zoe, email: z@example.org, expertise: [moodle]}\n"
            "  - {name: Yann, email: y@example.org, expertise: [Postgres, moodle, backups]}\n"
            "  - {name: adam, email: a@example.org, expertise: [moodle, dns]}\n"
            "  - {name: Xavier, email: x@example.org, expertise: [dns]}\n"
            "  - {name: Walt, email: w@example.org}\n",
        )
    )
    found = [(p.name, tags) for p, tags in contacts.experts(["moodle", "postgres", "backups"])]
    assert found == [
        ("Yann", ("Postgres", "moodle", "backups")),
        ("adam", ("moodle",)),
        ("Zoe", ("moodle",)),
    ]
    assert contacts.experts(["kubernetes"]) == []
    assert [p.name for p, _ in contacts.experts("dns")] == ["adam", "Xavier"]


def test_service_and_escalation_lists(contacts: Contacts) -> None:
    assert contacts.service("learn").notify == ("stakeholders",)
    assert contacts.service("Learn").key == "learn"
    assert dict(contacts.service("learn").escalate) == {
        timedelta(hours=4): ("management",), timedelta(hours=24): ("upper-management",)}
    assert contacts.service("api").escalate == ()
    with pytest.raises(NotFound, match="known services: learn, api"):
        contacts.service("wiki")


def test_empty_contacts() -> None:
    nobody = empty_contacts()
    assert nobody.people == {} and nobody.lists == {} and nobody.path is None
    assert not nobody.knows("a@example.org")
    assert nobody.experts(["dns"]) == []
    with pytest.raises(NotFound, match="defines no services"):
        nobody.service("learn")
    with pytest.raises(ContactsError, match="no list named 'x'"):
        nobody.expand(["x"])


def test_contacts_are_immutable(contacts: Contacts) -> None:
    with pytest.raises(TypeError):
        contacts.people["x"] = Person("X", "x@example.org")  # type: ignore[index]
    with pytest.raises(AttributeError):
        contacts.path = None  # type: ignore[misc]


def test_is_address() -> None:
    assert is_address("ana.lima+incidents@mail.example.org")
    for bad in [
        "",
        "ana",
        "ana@",
        "@example.org",
        "a@@example.org",
        "a@example",
        "a@.org",
        "a@example.",
        "a @example.org",
        "a@example.org\n",
        "<a@example.org>",
        "a@example.org, b@example.org",
    ]:
        assert not is_address(bad), bad


# --- round-trip editing ----------------------------------------------------------------------


def test_add_then_remove_keeps_everything_else_byte_for_byte(tmp_path: Path) -> None:
    path = write(tmp_path, HAND_WRITTEN)
    editor = ContactsFile(path)
    editor.add_person(
        "Dev Patel",
        "dev@example.org",
        ["dns", "nginx"],
        "Asia/Kolkata",
        ["stakeholders", "management"],
    )
    contacts = editor.save()
    after_add = path.read_text(encoding="utf-8")

    removed, added = line_changes(HAND_WRITTEN, after_add)
    assert added == [
        "  - {name: Dev Patel, email: dev@example.org, expertise: [dns, nginx], "
        "timezone: Asia/Kolkata}\n",
        "    - dev@example.org\n",
        "  management: [eva@example.org, dev@example.org]   # head of IT\n",
    ]
    assert removed == ["  management: [eva@example.org]   # head of IT\n"]
    # appended after the last person and the last list member, in their indentation
    assert after_add.index("dev@example.org, expertise") > after_add.index("      - postgres")
    assert after_add.index("    - dev@example.org\n") > after_add.index("ops-team@example.org")
    assert contacts.person("dev@example.org") == Person(
        "Dev Patel", "dev@example.org", ("dns", "nginx"), "Asia/Kolkata"
    )
    assert contacts.expand(["stakeholders"])[-1] == "dev@example.org"

    editor = ContactsFile(path)
    editor.remove_person("Dev <DEV@example.org>")
    contacts = editor.save()
    assert path.read_bytes() == HAND_WRITTEN.encode("utf-8")
    assert not contacts.knows("dev@example.org")


def test_remove_takes_the_address_out_of_every_list(tmp_path: Path) -> None:
    path = write(tmp_path, HAND_WRITTEN)
    editor = ContactsFile(path)
    editor.remove_person("ben@example.org")  # written BEN@ in people, ben@ in the list
    contacts = editor.save()
    assert not contacts.knows("ben@example.org")
    removed, added = line_changes(HAND_WRITTEN, path.read_text(encoding="utf-8"))
    assert added == []
    assert removed == [
        '  - {name: "Ben Okafor",   email: BEN@example.org, expertise: [moodle]}   # back in May\n',
        "    - ben@example.org\n",
    ]


def test_remove_multi_line_person(tmp_path: Path) -> None:
    path = write(tmp_path, HAND_WRITTEN)
    editor = ContactsFile(path)
    editor.remove_person("chloe@example.org")
    editor.save()
    removed, added = line_changes(HAND_WRITTEN, path.read_text(encoding="utf-8"))
    assert added == []
    assert removed == [
        "  - name: Chloé Martin\n",
        "    email: chloe@example.org\n",
        "    expertise:\n",
        "      - moodle\n",
        "      - postgres\n",
    ]


def test_remove_from_flow_lists(tmp_path: Path) -> None:
    text = (
        "people: [{name: A, email: a@example.org}, {name: B, email: b@example.org}]\n"
        "lists:\n"
        "  one: [a@example.org]   # only a\n"
        "  first: [A@example.org, b@example.org]\n"
        "  middle: [b@example.org, a@example.org, c@example.org]\n"
        "  last: [b@example.org, c@example.org, a@example.org,]\n"
        "  twice: [a@example.org, a@example.org, c@example.org]\n"
        "  multi: [\n"
        "    a@example.org,\n"
        "    c@example.org,\n"
        "  ]\n"
        "  other: [c@example.org]\n"
    )
    path = write(tmp_path, text)
    editor = ContactsFile(path)
    editor.remove_person("a@example.org")
    contacts = editor.save()
    assert path.read_text(encoding="utf-8") == (
        "people: [{name: B, email: b@example.org}]\n"
        "lists:\n"
        "  one: []   # only a\n"
        "  first: [b@example.org]\n"
        "  middle: [b@example.org, c@example.org]\n"
        "  last: [b@example.org, c@example.org,]\n"
        "  twice: [c@example.org]\n"
        "  multi: [\n"
        "    c@example.org,\n"
        "  ]\n"
        "  other: [c@example.org]\n"
    )
    assert not contacts.knows("a@example.org")


def test_remove_last_member_of_a_block_list_leaves_it_empty(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "people:\n  - {name: A, email: a@example.org}\nlists:\n  s:\n    - a@example.org\n"
        "services:\n  x: {notify: [s]}\n",
    )
    editor = ContactsFile(path)
    editor.remove_person("a@example.org")
    contacts = editor.save()
    assert contacts.people == {} and contacts.lists == {"s": ()}
    assert path.read_text() == "people:\nlists:\n  s:\nservices:\n  x: {notify: [s]}\n"


def test_remove_an_address_that_is_only_on_lists(tmp_path: Path) -> None:
    path = write(tmp_path, HAND_WRITTEN)
    editor = ContactsFile(path)
    editor.remove_person("ops-team@example.org")
    assert not editor.save().knows("ops-team@example.org")


def test_remove_unknown_is_not_found(tmp_path: Path) -> None:
    path = write(tmp_path, HAND_WRITTEN)
    with pytest.raises(NotFound, match="mallory@example.org"):
        ContactsFile(path).remove_person("mallory@example.org")
    assert path.read_text(encoding="utf-8") == HAND_WRITTEN


def test_add_duplicate_is_refused_with_the_existing_line(tmp_path: Path) -> None:
    path = write(tmp_path, HAND_WRITTEN)
    with pytest.raises(ContactsError) as caught:
        ContactsFile(path).add_person("Benjamin", "Ben@Example.org")
    assert str(caught.value).startswith(f"{path}:6: Ben@Example.org is already in the contacts")


def test_add_to_unknown_list_names_the_known_lists(tmp_path: Path) -> None:
    path = write(tmp_path, HAND_WRITTEN)
    with pytest.raises(ContactsError) as caught:
        ContactsFile(path).add_person("Dev", "dev@example.org", lists=["board"])
    message = str(caught.value)
    assert message.startswith(f"{path}:13: no list named 'board'")
    assert "stakeholders, management, upper-management" in message
    assert path.read_text(encoding="utf-8") == HAND_WRITTEN


def test_add_does_not_repeat_an_address_already_on_the_list(tmp_path: Path) -> None:
    path = write(tmp_path, HAND_WRITTEN)
    editor = ContactsFile(path)
    editor.add_person("Ops", "OPS-TEAM@example.org", lists=["stakeholders"])
    editor.save()
    _, added = line_changes(HAND_WRITTEN, path.read_text(encoding="utf-8"))
    assert added == ["  - {name: Ops, email: OPS-TEAM@example.org}\n"]


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("", "people:\n  - {name: A, email: a@example.org}\n"),
        ("# just a comment", "# just a comment\npeople:\n  - {name: A, email: a@example.org}\n"),
        ("people:\n", "people:\n  - {name: A, email: a@example.org}\n"),
        ("people: []  # none\n", "people: [{name: A, email: a@example.org}]  # none\n"),
        ("people: ~\n", "people: [{name: A, email: a@example.org}]\n"),
        (
            "lists: {}\npeople:\n- {name: B, email: b@example.org}\n",
            "lists: {}\npeople:\n- {name: B, email: b@example.org}\n"
            "- {name: A, email: a@example.org}\n",
        ),
    ],
)
def test_add_person_to_sparse_files(tmp_path: Path, before: str, after: str) -> None:
    path = write(tmp_path, before)
    editor = ContactsFile(path)
    editor.add_person("A", "a@example.org")
    editor.save()
    assert path.read_text() == after


def test_add_quotes_values_that_yaml_would_misread(tmp_path: Path) -> None:
    path = write(tmp_path, "people:\n  - {name: A, email: a@example.org}\n")
    editor = ContactsFile(path)
    editor.add_person("Null", "n@example.org", ["true", "c#, [x]", "ops: on-call"], None)
    contacts = editor.save()
    assert path.read_text().splitlines()[-1] == (
        '  - {name: "Null", email: n@example.org, expertise: ["true", "c#, [x]", "ops: on-call"]}'
    )
    assert contacts.people["n@example.org"].expertise == ("true", "c#, [x]", "ops: on-call")


def _valid_name(name: str) -> bool:
    stripped = name.strip()
    return bool(stripped) and not any(unicodedata.category(c) in ("Cc", "Cs") for c in stripped)


@settings(max_examples=150, deadline=None)
@given(st.text(min_size=1, max_size=30).filter(_valid_name))
def test_any_valid_name_survives_a_round_trip(name: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "contacts.yaml"
        path.write_text("people:\n  - {name: A, email: a@example.org}\n", encoding="utf-8")
        editor = ContactsFile(path)
        editor.add_person(name, "n@example.org", [name])
        contacts = editor.save()
        assert contacts.people["n@example.org"].name == name.strip()
        assert contacts.people["n@example.org"].expertise == (name.strip(),)


def test_crlf_file_keeps_its_line_endings(tmp_path: Path) -> None:
    text = HAND_WRITTEN.replace("\n", "\r\n")
    path = write(tmp_path, text)
    editor = ContactsFile(path)
    editor.add_person("Dev", "dev@example.org", lists=["upper-management"])
    editor.save()
    data = path.read_bytes()
    assert b"\n" not in data.replace(b"\r\n", b"")
    editor = ContactsFile(path)
    editor.remove_person("dev@example.org")
    editor.save()
    assert path.read_bytes() == text.encode("utf-8")


def test_save_refuses_an_invalid_edit_and_leaves_the_file_alone(tmp_path: Path) -> None:
    path = write(tmp_path, HAND_WRITTEN)
    mtime = path.stat().st_mtime_ns
    editor = ContactsFile(path)
    editor.add_person("Dev", "dev@example.org", timezone="Mars/Olympus")
    with pytest.raises(ContactsError) as caught:
        editor.save()
    assert str(caught.value).startswith(f"{path}:12: unknown time zone 'Mars/Olympus'")
    assert path.read_bytes() == HAND_WRITTEN.encode("utf-8")
    assert path.stat().st_mtime_ns == mtime
    assert os.listdir(tmp_path) == ["contacts.yaml"]

    editor = ContactsFile(path)
    editor.add_person("Dev", "dev at example.org")
    with pytest.raises(ContactsError, match=r":12: 'dev at example.org' is not a valid"):
        editor.save()
    assert path.read_bytes() == HAND_WRITTEN.encode("utf-8")


def test_editing_an_invalid_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "people:\n  - {name: A}\n")
    with pytest.raises(ContactsError, match=r":2: person 'A' has no `email:`"):
        ContactsFile(path)


def test_save_writes_atomically_keeps_mode_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = write(tmp_path, HAND_WRITTEN)
    path.chmod(0o640)
    inode = path.stat().st_ino
    editor = ContactsFile(path)
    editor.add_person("Dev", "dev@example.org")
    editor.save()
    assert os.listdir(tmp_path) == ["contacts.yaml"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert path.stat().st_ino != inode  # replaced by rename, not rewritten in place


def test_failed_write_leaves_the_file_and_no_temp_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, HAND_WRITTEN)
    editor = ContactsFile(path)
    editor.add_person("Dev", "dev@example.org")

    def full_disk(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(ContactsError, match="No space left on device"):
        editor.save()
    assert os.listdir(tmp_path) == ["contacts.yaml"]
    assert path.read_text(encoding="utf-8") == HAND_WRITTEN


def test_save_edits_the_target_of_a_symlink(tmp_path: Path) -> None:
    real = write(tmp_path, HAND_WRITTEN, "real.yaml")
    link = tmp_path / "contacts.yaml"
    link.symlink_to(real)
    editor = ContactsFile(link)
    editor.add_person("Dev", "dev@example.org")
    editor.save()
    assert link.is_symlink()
    assert "dev@example.org" in real.read_text(encoding="utf-8")


def test_save_refuses_when_the_file_changed_meanwhile(tmp_path: Path) -> None:
    path = write(tmp_path, HAND_WRITTEN)
    editor = ContactsFile(path)
    editor.add_person("Dev", "dev@example.org")
    hand_edit = HAND_WRITTEN + "# edited by hand meanwhile\n"
    path.write_text(hand_edit, encoding="utf-8")
    with pytest.raises(ContactsError, match="changed on disk"):
        editor.save()
    assert path.read_text(encoding="utf-8") == hand_edit


def test_several_edits_before_one_save(tmp_path: Path) -> None:
    path = write(tmp_path, HAND_WRITTEN)
    editor = ContactsFile(path)
    editor.add_person("Dev", "dev@example.org", lists=["management"])
    editor.add_person("Eve", "eve@example.org", lists=["management"])
    editor.remove_person("ana@example.org")
    assert path.read_text(encoding="utf-8") == HAND_WRITTEN  # nothing written before save
    contacts = editor.save()
    assert contacts.expand(["management"]) == [
        "eva@example.org",
        "dev@example.org",
        "eve@example.org",
    ]
    assert [p.name for p in contacts.people.values()] == [
        "Ben Okafor",
        "Chloé Martin",
        "Dev",
        "Eve",
    ]
    assert editor.text == path.read_text(encoding="utf-8")


def test_a_service_names_its_oncall_people_in_order(tmp_path: Path) -> None:
    text = EXAMPLE_FOR_ONCALL.replace("ONCALL", "[Ben@example.org, ana@example.org]")
    contacts = parse_contacts(text, tmp_path / "contacts.yaml")
    assert contacts.service("learn").oncall == ("ben@example.org", "ana@example.org")


def test_an_oncall_person_must_be_in_people(tmp_path: Path) -> None:
    text = EXAMPLE_FOR_ONCALL.replace("ONCALL", "[zoe@example.org]")
    with pytest.raises(ContactsError, match=r"contacts.yaml:9: service 'learn' oncall: "
                                            r"'zoe@example.org' is not in `people:`"):
        parse_contacts(text, tmp_path / "contacts.yaml")


EXAMPLE_FOR_ONCALL = """people:
  - {name: Ana Lima, email: ana@example.org}
  - {name: Ben Okafor, email: ben@example.org}
lists:
  stakeholders: [ana@example.org]
services:
  learn:
    notify: [stakeholders]
    oncall: ONCALL
"""
