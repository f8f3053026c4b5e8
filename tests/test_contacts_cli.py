"""`mailflow contacts …` as a user runs it, on real files: output, edits, exit codes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from mailflow.cli import cli
from mailflow.contacts_cli import contacts

from .conftest import write_config

COMMENTED = """\
# Directory: every comment here must survive an edit.
people:   # who
  - {name: Ana Lima, email: ana@example.org, expertise: [postgres]}  # lead DBA

  # Bob is on leave until March
  - name: Bob Stone     # block style
    email: bob@example.org
lists:
  stakeholders:         # everyone who cares
    - ana@example.org   # Ana
    - ops-team@example.org
  management: [bob@example.org]   # flow style
services:
  learn:
    title: Learn
    notify: [stakeholders]
    escalate: {4h: [management]}
# trailing comment
"""


@pytest.fixture(autouse=True)
def registered() -> Iterator[None]:
    """`contacts` under `cli` for these tests only, as cli.py will register it."""
    before = cli.commands.get("contacts")
    cli.add_command(contacts)
    yield
    if before is None:
        cli.commands.pop("contacts", None)
    else:
        cli.add_command(before)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """mailflow.toml (Maildir, no relay) and the conftest contacts.yaml in tmp_path."""
    write_config(tmp_path, None)
    return tmp_path


def run(folder: Path, *args: str) -> Result:
    env = {"MAILFLOW_CONFIG": str(folder / "mailflow.toml"), "MAILFLOW_NOW": "2026-11-24T10:00:00Z"}
    return CliRunner().invoke(cli, ["contacts", *args], env=env, catch_exceptions=False)


def one_line_error(result: Result, *parts: str) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), lines
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


def test_list_shows_people_lists_and_services(folder: Path) -> None:
    result = run(folder, "list")
    assert result.exit_code == 0, result.output
    out = result.stdout.splitlines()
    assert out[0] == "people (5):"
    assert ("  Ana Lima <ana@example.org>  expertise: postgres, backups  "
            "timezone: Europe/Zurich  lists: stakeholders") in out
    assert "  stakeholders: ana@example.org, ops-team@example.org" in out
    assert "  learn: ISC Learn Platform" in out
    assert "    escalate 4h: management" in out and "    escalate 1d: upper-management" in out
    assert out.index("lists (3):") < out.index("services (1):")


def test_list_json(folder: Path) -> None:
    data = json.loads(run(folder, "list", "--json").stdout)
    assert set(data) == {"people", "lists", "services"}
    assert data["people"][0] == {"name": "Ana Lima", "email": "ana@example.org",
                                 "expertise": ["postgres", "backups"],
                                 "timezone": "Europe/Zurich", "lists": ["stakeholders"]}
    assert data["people"][3]["lists"] == ["management"]
    assert data["lists"]["stakeholders"] == ["ana@example.org", "ops-team@example.org"]
    assert data["services"]["learn"] == {
        "title": "ISC Learn Platform", "notify": ["stakeholders"],
        "escalate": {"4h": ["management"], "1d": ["upper-management"]},
        "expertise": ["moodle", "postgres"]}


def test_show_person(folder: Path) -> None:
    result = run(folder, "show", "ANA@example.org")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "Ana Lima <ana@example.org>"
    assert "service learn (ISC Learn Platform): notify via stakeholders" in result.stdout
    data = json.loads(run(folder, "show", "Dan Boss <dan@example.org>", "--json").stdout)
    assert data == {"name": "Dan Boss", "email": "dan@example.org", "expertise": [],
                    "timezone": None, "lists": ["management"],
                    "services": [{"key": "learn", "title": "ISC Learn Platform", "notify": [],
                                  "escalate": {"4h": ["management"]}}]}


def test_show_plain_address_and_unknown(folder: Path) -> None:
    data = json.loads(run(folder, "show", "ops-team@example.org", "--json").stdout)
    assert data["name"] is None and data["lists"] == ["stakeholders"]
    assert [s["key"] for s in data["services"]] == ["learn"]
    # Raised inside the nested group, still turned into one `Error:` line by cli's Group.
    one_line_error(run(folder, "show", "zed@example.org"), "zed@example.org is not in")


def test_add_then_list_shows_the_person(folder: Path) -> None:
    result = run(folder, "add", "--name", "Gus Berg", "--email", "gus@example.org",
                 "--expertise", "postgres,dns", "--timezone", "Europe/Zurich",
                 "--list", "stakeholders", "--list", "management")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("added Gus Berg <gus@example.org> to ")
    assert result.stdout.rstrip().endswith("on lists: stakeholders, management")
    data = json.loads(run(folder, "list", "--json").stdout)
    assert data["people"][-1] == {"name": "Gus Berg", "email": "gus@example.org",
                                  "expertise": ["postgres", "dns"], "timezone": "Europe/Zurich",
                                  "lists": ["stakeholders", "management"]}
    assert run(folder, "check").stdout == "ok: 6 people, 3 lists, 1 service\n"


def test_add_keeps_the_rest_of_the_file_byte_for_byte(folder: Path) -> None:
    path = folder / "contacts.yaml"
    path.write_bytes(COMMENTED.encode())
    result = run(folder, "add", "--name", "Gus Berg", "--email", "gus@example.org",
                 "--list", "stakeholders", "--list", "management")
    assert result.exit_code == 0, result.output
    expected = (COMMENTED
                .replace("    email: bob@example.org\n",
                         "    email: bob@example.org\n"
                         "  - {name: Gus Berg, email: gus@example.org}\n")
                .replace("    - ops-team@example.org\n",
                         "    - ops-team@example.org\n    - gus@example.org\n")
                .replace("[bob@example.org]", "[bob@example.org, gus@example.org]"))
    assert path.read_bytes() == expected.encode()


def test_remove_takes_the_person_off_every_list(folder: Path) -> None:
    result = run(folder, "remove", "ana@example.org")
    assert result.exit_code == 0, result.output
    assert "removed Ana Lima <ana@example.org>" in result.stdout
    assert "(people; lists: stakeholders)" in result.stdout
    data = json.loads(run(folder, "list", "--json").stdout)
    assert "ana@example.org" not in [p["email"] for p in data["people"]]
    assert data["lists"]["stakeholders"] == ["ops-team@example.org"]
    assert "# Test directory" in (folder / "contacts.yaml").read_text()


def test_remove_plain_address_and_unknown(folder: Path) -> None:
    result = run(folder, "remove", "ops-team@example.org")
    assert result.exit_code == 0, result.output
    assert "removed ops-team@example.org" in result.stdout
    assert "lists: stakeholders" in result.stdout
    assert json.loads(run(folder, "list", "--json").stdout)["lists"]["stakeholders"] == [
        "ana@example.org"]
    before = (folder / "contacts.yaml").read_bytes()
    one_line_error(run(folder, "remove", "zed@example.org"), "zed@example.org is not in")
    assert (folder / "contacts.yaml").read_bytes() == before


@pytest.mark.parametrize(("args", "message"), [
    (["--email", "gus@example.org", "--list", "nope"], "no list named 'nope'"),
    (["--email", "BOB@example.org"], "already in the contacts as Bob Stone"),
    (["--email", "not-an-address"], "not a valid email address"),
    (["--email", "gus@example.org", "--name", " "], "--name is empty"),
    (["--email", "gus@example.org", "--timezone", "Mars/Olympus"], "unknown time zone"),
])
def test_refused_add_fails_with_one_line_and_leaves_the_file(folder: Path, args: list[str],
                                                             message: str) -> None:
    path = folder / "contacts.yaml"
    before = path.read_bytes()
    line = one_line_error(run(folder, "add", "--name", "Gus Berg", *args), message)
    assert path.read_bytes() == before, line
    assert sorted(p.name for p in folder.iterdir()) == ["contacts.yaml", "mailflow.toml"]


def test_check_ok_and_broken(folder: Path) -> None:
    result = run(folder, "check")
    assert result.exit_code == 0 and result.stdout == "ok: 5 people, 3 lists, 1 service\n"
    (folder / "contacts.yaml").write_text(
        "people:\n  - {name: Ana, email: ana@example.org}\n  - {name: Bob}\n"
        "lists:\n  stakeholders: [nobody]\n"
        "services:\n  learn: {title: Learn, notify: [stakeholders]}\n")
    result = run(folder, "check")
    assert result.exit_code == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, lines
    assert "contacts.yaml:3: person 'Bob' has no `email:`" in lines[0]
    assert "contacts.yaml:5: list 'stakeholders'" in lines[1]


def test_check_yaml_syntax_error(folder: Path) -> None:
    (folder / "contacts.yaml").write_text("people:\n  - {name: Ana, email: [\n")
    result = run(folder, "check")
    assert result.exit_code == 1
    assert "contacts.yaml:" in result.stderr and "YAML syntax error" in result.stderr


def test_experts_best_match_first(folder: Path) -> None:
    result = run(folder, "experts", "moodle", "postgres")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "Chloe Martin <chloe@example.org>: moodle, postgres (moodle, postgres, nginx)",
        "Ana Lima <ana@example.org>: postgres (postgres, backups)",
        "Bob Stone <bob@example.org>: moodle (moodle)",
    ]
    rows = json.loads(run(folder, "experts", "NGINX,backups", "--json").stdout)
    assert [(r["email"], r["matched"]) for r in rows] == [
        ("ana@example.org", ["backups"]), ("chloe@example.org", ["nginx"])]


def test_experts_none(folder: Path) -> None:
    result = run(folder, "experts", "cobol")
    assert result.exit_code == 0 and "nobody has expertise in cobol" in result.stdout
    assert json.loads(run(folder, "experts", "cobol", "--json").stdout) == []


def test_missing_config_is_one_error_line(tmp_path: Path) -> None:
    one_line_error(run(tmp_path / "nowhere", "list"), "mailflow init")


def test_every_subcommand_has_help_with_an_example() -> None:
    assert contacts.help and "Example:" in contacts.help
    assert isinstance(contacts, click.Group)
    for name, command in contacts.commands.items():
        assert command.help and "Example:" in command.help, name
        assert len(command.get_short_help_str()) <= 45 and "..." not in command.get_short_help_str()
