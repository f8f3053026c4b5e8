"""The `mailflow` command as a user runs it: exit codes, one-line errors, the contract."""

from __future__ import annotations

import json
import mailbox
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from mailflow.cli import cli
from mailflow.testing import Sink

from .conftest import write_config
from .helpers import DECLARE, run, text_of


def test_the_readme_transcript_over_smtp(project: Path, sink: Sink, tmp_path: Path) -> None:
    result = run(project, *DECLARE)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "INC-1"
    assert len(sink.received) == 3
    assert run(project, "tick").exit_code == 0
    assert len(sink.received) == 3, "tick sends nothing twice"
    result = run(project, "update", "INC-1", "--text", "Index is corrupt; rebuilding", "--send",
                 now="2026-11-24T10:20:00Z")
    assert result.exit_code == 0 and "next communication at 11:20 UTC" in result.output
    result = run(project, "resolve", "INC-1", "--steps", "Rebuilt the index",
                 now="2026-11-24T10:50:00Z")
    assert result.exit_code == 0, result.output
    assert [r.message["X-Mailflow-Kind"] for r in sink.received].count("solved") == 3

    listed = json.loads(run(project, "list", "--all", "--json").stdout)
    assert [(i["ref"], i["status"]) for i in listed] == [("INC-1", "resolved")]
    shown = json.loads(run(project, "show", "INC-1", "--json").stdout)
    assert shown["severity"] == "P1" and shown["status"] == "resolved"
    assert shown["declared_at"] == "2026-11-24T10:00:00Z"
    assert shown["timeline"][0] == {"at": "2026-11-24T10:00:00Z", "kind": "declared",
                                    "author": "ana@example.org",
                                    "text": "P1 complete downtime of ISC Learn Platform: "
                                            "Learn platform returns 502"}
    assert {"at", "kind", "author", "text"} == set(shown["timeline"][-1])
    ana = next(r for r in shown["recipients"] if r["email"] == "ana@example.org")
    assert [(m["kind"], m["status"]) for m in ana["messages"]] == [
        ("start", "sent"), ("update", "sent"), ("solved", "sent"), ("notice", "sent")]
    postmortem = run(project, "postmortem", "INC-1").stdout
    assert postmortem.startswith("# Postmortem: [INC-1]") and "## Timeline" in postmortem
    assert "postmortem marked done" in run(project, "postmortem", "INC-1", "--done").stdout
    out = tmp_path / "update.html"
    assert run(project, "preview", "INC-1", "--kind", "update", "--out", str(out)).exit_code == 0
    assert "Index is corrupt; rebuilding" in out.read_text()
    assert "text:" not in run(project, "show", "INC-1").output  # human view renders


def test_maildir_when_no_relay(tmp_path: Path) -> None:
    write_config(tmp_path, None)
    assert run(tmp_path, *DECLARE).exit_code == 0
    box = mailbox.Maildir(tmp_path / "mail", create=False)
    messages = list(box)
    assert sorted(m["Delivered-To"] for m in messages) == [
        "ana@example.org", "ops-team@example.org", "student-council@example.org"]
    assert all(m["Subject"] == "[INC-1] ISC Learn Platform: outage" for m in messages)
    assert stat.S_IMODE((tmp_path / "mail").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "state" / "mailflow.db").stat().st_mode) == 0o600


def test_init_writes_and_never_overwrites(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["init", "--dir", str(tmp_path)])
    assert result.exit_code == 0
    toml = (tmp_path / "mailflow.toml").read_text()
    (tmp_path / "contacts.yaml").write_text("# mine\n")
    again = CliRunner().invoke(cli, ["init", "--dir", str(tmp_path)])
    assert "kept" in again.output
    assert (tmp_path / "mailflow.toml").read_text() == toml
    assert (tmp_path / "contacts.yaml").read_text() == "# mine\n"
    # What init wrote works as it is.
    fresh = tmp_path / "fresh"
    CliRunner().invoke(cli, ["init", "--dir", str(fresh)])
    result = run(fresh, *DECLARE)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(("args", "message"), [
    (["--service", "nope"], "no service 'nope'"),
    (["--severity", "P9"], "severity 'P9'"),
    (["--impact", "sideways"], "impact 'sideways'"),
    (["--lead", "not-an-address"], "not an email address"),
])
def test_bad_declarations_fail_with_one_line_and_write_nothing(project: Path, sink: Sink,
                                                               args: list[str],
                                                               message: str) -> None:
    argv = list(DECLARE)
    for flag, value in zip(args[::2], args[1::2], strict=False):
        argv[argv.index(flag) + 1] = value
    result = run(project, *argv)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], lines
    assert json.loads(run(project, "list", "--all", "--json").stdout) == []
    assert sink.received == []


def test_unknown_incident_and_bad_config(project: Path, tmp_path: Path) -> None:
    result = run(project, "show", "INC-7")
    assert result.exit_code == 1 and "no incident 'INC-7'" in result.stderr
    (project / "mailflow.toml").write_text('secret = "0123456789abcdef0"\n[cadence]\nupdate_every = {P1 = "soon"}\n')
    result = run(project, "list")
    assert result.exit_code == 1
    assert "mailflow.toml: cadence.update_every.P1:" in result.stderr
    (project / "mailflow.toml").write_text('colour = "blue"\n')
    assert "mailflow.toml: colour: unknown key" in run(project, "list").stderr
    missing = run(tmp_path / "nowhere", "list")
    assert missing.exit_code == 1 and "mailflow init" in missing.stderr


def test_malformed_contacts_is_refused_with_its_line(project: Path) -> None:
    (project / "contacts.yaml").write_text(
        "people:\n  - {name: Ana, email: ana@example.org}\nlists:\n  stakeholders: [nobody]\n"
        "services:\n  learn: {title: Learn, notify: [stakeholders]}\n")
    result = run(project, *DECLARE)
    assert result.exit_code == 1
    assert "contacts.yaml:4:" in result.stderr


def test_relay_down_keeps_the_mail_and_tick_sends_it_later(project: Path, sink: Sink) -> None:
    sink.refuse()
    result = run(project, *DECLARE)
    assert result.exit_code == 1
    assert result.stdout.splitlines()[0] == "INC-1", "the incident exists; only delivery waits"
    err = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(err) == 1 and "unreachable" in err[0] and "3 email(s) wait in the outbox" in err[0]
    assert "retry in 1 min" in err[0]
    sink.accept()
    assert run(project, "tick", now="2026-11-24T10:00:30Z").stdout.startswith(
        "sent 0"), "not before the backoff"
    result = run(project, "tick", now="2026-11-24T10:01:00Z")
    assert result.exit_code == 0 and "sent 3" in result.stdout
    assert len(sink.received) == 3
    assert run(project, "tick", now="2026-11-24T10:02:00Z").stdout.startswith("sent 0")


def test_permanent_failure_is_recorded_and_does_not_block_others(project: Path,
                                                                  sink: Sink) -> None:
    sink.handler.reject = {"ops-team@example.org"}
    result = run(project, *DECLARE)
    assert result.exit_code == 1 and "550" in result.stderr
    starts = [r for r in sink.received if r.message["X-Mailflow-Kind"] == "start"]
    assert sorted(r.rcpt_tos[0] for r in starts) == [
        "ana@example.org", "student-council@example.org"]
    assert run(project, "tick").exit_code == 0  # the failure notice is the scheduler's job
    [told] = [r for r in sink.received if r.message["X-Mailflow-Kind"] == "notice"]
    assert told.rcpt_tos == ["ana@example.org"], "the lead is told"
    assert "ops-team@example.org: 550" in text_of(told.message)
    shown = json.loads(run(project, "show", "INC-1", "--json").stdout)
    ops = next(r for r in shown["recipients"] if r["email"] == "ops-team@example.org")
    assert ops["status"] == "failed" and "550" in ops["error"]
    assert any(e["kind"] == "failure" and "ops-team@example.org" in e["text"]
               for e in shown["timeline"])


def test_every_command_has_help_with_an_example_and_is_in_the_readme() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for name, command in cli.commands.items():
        assert command.help and "Example:" in command.help, name
        assert f"mailflow {name}" in readme, f"{name} is not documented in the README"


def test_parse_reply_shows_what_would_be_posted(tmp_path: Path) -> None:
    fixtures = Path(__file__).parent / "fixtures" / "replies"
    result = CliRunner().invoke(cli, ["parse-reply", str(fixtures / "commands.eml"), "--json"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert {"name": "severity", "value": "P2"} in data["commands"]
    assert data["is_auto_reply"] is False and data["is_bounce"] is False
    assert data["text"] and ">" not in data["text"]
    human = CliRunner().invoke(cli, ["parse-reply", str(fixtures / "ooo_auto_submitted.eml")])
    assert "AUTO-REPLY, never posted (Auto-Submitted" in human.stdout
    bounce = CliRunner().invoke(cli, ["parse-reply", str(fixtures / "dsn_bounce.eml")])
    assert "BOUNCE" in bounce.stdout


def test_file_errors_are_one_line(project: Path, sink: Sink) -> None:
    assert run(project, *DECLARE).exit_code == 0
    result = run(project, "preview", "INC-1", "--out", "/nonexistent/dir/x.html")
    assert result.exit_code == 1
    assert result.stderr.strip() == "Error: /nonexistent/dir/x.html: No such file or directory"


def test_update_changes_fields_from_the_cli(project: Path, sink: Sink) -> None:
    assert run(project, *DECLARE).exit_code == 0
    result = run(project, "update", "INC-1", "--severity", "P0", "--eta", "30 min",
                 now="2026-11-24T10:10:00Z")
    assert result.exit_code == 0, result.output
    assert "it goes out at 10:40 UTC" in result.stdout, "P0 cadence: every 30 min from now"
    shown = json.loads(run(project, "show", "INC-1", "--json").stdout)
    assert shown["severity"] == "P0" and shown["eta"] == "30 min"
    # One call, one entry: both changes on one line.
    [change] = [e for e in shown["timeline"] if e["kind"] == "change"]
    assert change["author"] == "ana@example.org"
    assert "Severity: P1 → P0 · How long: " in change["text"] and "→ 30 min" in change["text"]
    assert run(project, "update", "INC-1").exit_code == 1, "nothing to do is an error"
    assert run(project, "update", "INC-1", "--severity", "P9").exit_code == 1
