"""What an operator meets first: nothing fails silently, output people read, help, bad values."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from mailflow.cli import cli, show_lines
from mailflow.testing import CONTACTS, Sink

from .conftest import write_config

DECLARE = ["declare", "--service", "learn", "--severity", "P1", "--impact", "outage",
           "--summary", "Learn platform returns 502"]
NOW = "2026-11-24T10:00:00Z"


def run(folder: Path, *args: str, now: str = NOW, user: str = "ana@example.org") -> Result:
    env = {"MAILFLOW_CONFIG": str(folder / "mailflow.toml"), "MAILFLOW_NOW": now,
           "MAILFLOW_USER": user}
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def with_oncall(folder: Path, oncall: str) -> None:
    """The test contacts, with an `oncall:` line for the learn service."""
    text = CONTACTS.replace("    expertise: [moodle, postgres]\n",
                            f"    expertise: [moodle, postgres]\n    oncall: {oncall}\n")
    assert text != CONTACTS
    (folder / "contacts.yaml").write_text(text, encoding="utf-8")


# --- nothing fails silently ------------------------------------------------------------------

def test_declare_without_a_lead_takes_the_first_oncall_person(tmp_path: Path,
                                                             sink: Sink) -> None:
    with_oncall(tmp_path, "[chloe@example.org, ana@example.org]")
    write_config(tmp_path, sink.port)
    result = run(tmp_path, *DECLARE)
    assert result.exit_code == 0, result.output
    assert result.stdout == "INC-1\n"
    assert "lead: chloe@example.org (first on call for learn)" in result.stderr
    shown = json.loads(run(tmp_path, "show", "INC-1", "--json").stdout)
    assert shown["lead"] == "chloe@example.org"
    assert "chloe@example.org" in [r.rcpt_tos[0] for r in sink.received]
    # --lead still wins over the on-call.
    result = run(tmp_path, *DECLARE, "--lead", "bob@example.org")
    assert json.loads(run(tmp_path, "show", "INC-2", "--json").stdout)["lead"] == \
        "bob@example.org"


def test_declare_with_no_lead_anywhere_is_refused_in_one_line(project: Path,
                                                             sink: Sink) -> None:
    result = run(project, *DECLARE)
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("Error: no lead for this incident: name one with --lead EMAIL")
    assert "`oncall:" in line and "'learn'" in line
    assert json.loads(run(project, "list", "--all", "--json").stdout) == []
    assert sink.received == []


def test_update_send_with_a_failed_recipient_says_what_went_where(project: Path,
                                                                 sink: Sink) -> None:
    assert run(project, *DECLARE, "--lead", "ana@example.org").exit_code == 0
    sink.handler.reject = {"ops-team@example.org"}
    result = run(project, "update", "INC-1", "--text", "Rebuilding", "--send",
                 now="2026-11-24T10:20:00Z")
    assert result.exit_code == 1
    out = result.stdout.splitlines()
    assert out[0] == "next communication at 11:20 UTC"
    assert out[1] == "update sent to 1 of 2"
    assert re.fullmatch(r"  not sent to ops-team@example\.org \(failed\): 550 .+", out[2]), out
    [err] = result.stderr.strip().splitlines()
    assert err.startswith("Error: 1 of 2 update email(s) failed, first ops-team@example.org: 550")
    updates = [r.rcpt_tos[0] for r in sink.received if r.message["X-Mailflow-Kind"] == "update"]
    assert updates == ["ana@example.org"]


def big_folder(folder: Path, count: int) -> None:
    """A Maildir setup whose stakeholders list has `count` addresses."""
    members = ", ".join(f"user{i}@example.org" for i in range(count))
    text = CONTACTS.replace("stakeholders: [ana@example.org, ops-team@example.org]",
                            f"stakeholders: [ana@example.org, {members}]")
    (folder / "contacts.yaml").write_text(text, encoding="utf-8")
    write_config(folder, None)


def test_no_progress_bar_when_not_on_a_terminal(tmp_path: Path) -> None:
    big_folder(tmp_path, 80)
    result = run(tmp_path, *DECLARE, "--lead", "ana@example.org")
    assert result.exit_code == 0, result.output
    assert "sending" not in result.stderr and "%" not in result.stderr
    assert "preparing" not in result.stderr
    assert result.stderr.splitlines()[-1] == "start notification sent to 81 of 81"


def test_a_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    """The real command with its stderr on a pseudo-terminal, as a person would run it."""
    big_folder(tmp_path, 80)
    master, slave = pty.openpty()
    env = {**os.environ, "MAILFLOW_CONFIG": str(tmp_path / "mailflow.toml"), "MAILFLOW_NOW": NOW,
           "MAILFLOW_USER": "ana@example.org", "COLUMNS": "100"}
    proc = subprocess.Popen([sys.executable, "-m", "mailflow.cli", *DECLARE,
                             "--lead", "ana@example.org"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    seen = b""
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    stdout, _ = proc.communicate(timeout=60)
    os.close(master)
    assert proc.returncode == 0, seen
    assert stdout == b"INC-1\n"
    text = seen.decode()
    assert "preparing the start notification…" in text
    assert "sending 81 emails" in text and "100%" in text, text


# --- output people read ----------------------------------------------------------------------

def test_show_is_written_for_people(project: Path, sink: Sink) -> None:
    assert run(project, *DECLARE, "--lead", "ana@example.org",
               now="2026-11-24T10:00:00.123456Z").exit_code == 0
    assert run(project, "update", "INC-1", "--text", "First line\nsecond line\n\nfourth line",
               "--next-update", "10:15", now="2026-11-25T09:15:30.5Z").exit_code == 0
    result = run(project, "show", "INC-1", now="2026-11-25T12:00:00Z")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0] == "[INC-1] ISC Learn Platform: outage", "the reference once"
    assert ".123456" not in result.stdout and ":00.5" not in result.stdout
    assert "  declared            2026-11-24 10:00 UTC" in lines, "another day: with its date"
    assert "  next communication  10:15 UTC" in lines, "today: the time alone"
    [i] = [n for n, line in enumerate(lines) if line.endswith("] First line")]
    assert lines[i].startswith("             09:15 update     [ana@example.org] ")
    assert lines[i].index("09:15") == lines[i - 1].index("10:00"), "times line up"
    column = lines[i].index("First line")
    assert lines[i + 1] == " " * column + "second line"
    assert lines[i + 2] == ""
    assert lines[i + 3] == " " * column + "fourth line"
    assert any(line.startswith("  2026-11-24 10:00 declared") for line in lines)


def test_show_names_the_reference_when_the_subject_lacks_it() -> None:
    data = {"ref": "INC-3", "subject": "Learn is down", "status": "open", "severity": "P1",
            "impact": "outage", "summary": "x", "lead": None, "communicator": None,
            "scribe": None, "declared_at": "2026-11-24T10:00:00Z",
            "next_communication_at": None, "resolved_at": None, "recipients": [],
            "timeline": []}
    assert show_lines(data, click.DateTime().convert("2026-11-24", None, None).date())[:2] == [
        "INC-3  Learn is down", "  status              open"]
    today = show_lines(dict(data, timeline=[{"at": "2026-11-24T10:00:00Z", "kind": "declared",
                                             "author": "", "text": "x"}]),
                       click.DateTime().convert("2026-11-24", None, None).date())
    assert today[-1] == "  10:00 declared   x", "today only: no date column"


def test_contacts_check_counts_in_words(project: Path) -> None:
    result = run(project, "contacts", "check")
    assert result.stdout == "ok: 5 people, 3 lists, 1 service\n"
    (project / "contacts.yaml").write_text(
        "people:\n  - {name: Ana Lima, email: ana@example.org}\nlists: {}\n")
    assert run(project, "contacts", "check").stdout == "ok: 1 person, 0 lists, 0 services\n"


def test_contacts_check_explains_an_indentation_error(project: Path) -> None:
    (project / "contacts.yaml").write_text(
        "people:\n  - name: Ana Lima\n    email: ana@example.org\n   expertise: [postgres]\n")
    result = run(project, "contacts", "check")
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"{project / 'contacts.yaml'}:4: YAML syntax error: indentation: "
                           "this line is indented by 3 spaces, which does not line up with "
                           "the line above (4 spaces) nor with the block that starts at line 2 "
                           "(2 spaces)"), line


def test_experts_suggests_the_close_tag(project: Path) -> None:
    result = run(project, "contacts", "experts", "postgresql")
    assert result.exit_code == 0
    assert result.stdout == "nobody has expertise in postgresql; did you mean postgres?\n"
    far = run(project, "contacts", "experts", "kubernetes")
    assert "did you mean" not in far.stdout and "contacts list" in far.stdout


def test_no_command_summary_is_cut() -> None:
    for args in ([], ["contacts"]):
        text = CliRunner().invoke(cli, [*args, "--help"], env={"COLUMNS": "80"}).output
        listing = text.split("Commands:")[1]
        assert "..." not in listing and "…" not in listing, listing
    text = CliRunner().invoke(cli, ["--help"], env={"COLUMNS": "80"}).output
    listing = text.split("Commands:")[1]
    assert "existing file." in listing.split("init")[1].split("list")[0], "the whole summary"


def test_the_top_level_example_works_as_written(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    help_text = cli.help or ""
    example = help_text.split("Example")[1].split(":", 1)[1]
    commands = [shlex.split(c) for c in example.replace("\\\n", " ").strip().splitlines()]
    assert [c[:2] for c in commands] == [["mailflow", "init"], ["mailflow", "declare"],
                                         ["mailflow", "show"]]
    env = {"MAILFLOW_CONFIG": None, "MAILFLOW_NOW": NOW, "MAILFLOW_USER": "ana@example.org"}
    monkeypatch.chdir(tmp_path)
    for argv in commands:
        result = CliRunner().invoke(cli, argv[1:], env=env, catch_exceptions=False)
        assert result.exit_code == 0, (argv, result.output)
    assert result.stdout.startswith("[INC-1] ")
    assert len(list((tmp_path / "mail" / "new").iterdir())) >= 3, "the start emails: ./mail"


def test_author_documents_mailflow_user() -> None:
    text = CliRunner().invoke(cli, ["update", "--help"], env={"COLUMNS": "200"}).output
    assert "MAILFLOW_USER=you@example.org" in text
    assert "$MAILFLOW_USER, else your login name" in text


def test_help_texts_stand_alone() -> None:
    """No help text refers to documents outside the project."""
    def texts(group: click.Group) -> list[str]:
        out = [group.help or ""]
        for command in group.commands.values():
            out += texts(command) if isinstance(command, click.Group) else [command.help or ""]
            out += [getattr(p, "help", "") or "" for p in command.params]
        return out
    assert not [t for t in texts(cli) if "seeds" in t]


# --- bad values ------------------------------------------------------------------------------

def test_bad_values_get_one_line_and_exit_1(project: Path, sink: Sink) -> None:
    assert run(project, *DECLARE, "--lead", "ana@example.org").exit_code == 0
    for args, message in [
        (["update", "INC-1", "--next-update", "25:00"], "is not a time of day"),
        (["update", "INC-1", "--next-update", "12:60"], "is not a time of day"),
        (["update", "INC-1", "--next-update", "3000000d"], "is too far ahead"),
        (["update", "INC-1", "--next-update", "soon"], "is not a duration"),
        (["show", "INC-99999999999999999999"], "no incident 'INC-99999999999999999999'"),
        (["update", "99999999999999999999999", "--text", "x"], "no incident"),
        (["update", "INC-1", "--next-update", "99999999999999999999d"], "is far too long"),
        (["update", "INC-1", "--severity", "P7"], "use one of P0, P1, P2, P3"),
        (["serve", "--tick", "0"], "Invalid value for '--tick'"),
        (["serve", "--port", "99999"], "Invalid value for '--port'"),
        (["contacts", "show", ""], "give an email address"),
    ]:
        result = run(project, *args)
        assert result.exit_code in (1, 2), (args, result.output)
        lines = [line for line in result.stderr.strip().splitlines() if "Error" in line]
        assert len(lines) == 1 and message in lines[0], (args, result.stderr)
        if result.exit_code == 1:
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    shown = json.loads(run(project, "show", "INC-1", "--json").stdout)
    assert shown["next_communication_at"] == "2026-11-24T11:00:00Z", "nothing changed"


def test_a_closed_pipe_ends_quietly(project: Path, sink: Sink) -> None:
    assert run(project, *DECLARE, "--lead", "ana@example.org").exit_code == 0
    for n in range(40):  # more than a pipe holds, so that writing must meet the closed end
        assert run(project, "update", "INC-1", "--text", f"update {n} " + "x" * 4000).exit_code == 0
    env = {**os.environ, "MAILFLOW_CONFIG": str(project / "mailflow.toml"),
           "MAILFLOW_NOW": NOW}
    proc = subprocess.Popen([sys.executable, "-m", "mailflow.cli", "show", "INC-1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith(b"[INC-1]")
    proc.stdout.close()  # what `| head -1` does once it has its line
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 1
    assert err == "", err
