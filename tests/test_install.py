"""The checkout and the systemd install: what `init` writes, what git ignores, the unit."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from mailflow.cli import cli
from mailflow.config import load_config

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "mailflow.service"


def test_init_writes_real_copies_never_links(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["init", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    contacts = tmp_path / "contacts.yaml"
    assert not contacts.is_symlink() and contacts.is_file()
    shipped = ROOT / "templates" / "contacts.yaml"
    assert contacts.read_text() == shipped.read_text()
    assert stat.S_IMODE(contacts.stat().st_mode) == 0o600
    # Editing the copy leaves the packaged example alone.
    before = shipped.read_bytes()
    env = {"MAILFLOW_CONFIG": str(tmp_path / "mailflow.toml")}
    added = CliRunner().invoke(cli, ["contacts", "add", "--name", "Gus Berg", "--email",
                                     "gus@example.org"], env=env)
    assert added.exit_code == 0, added.output
    assert "gus@example.org" in contacts.read_text()
    assert shipped.read_bytes() == before


def test_the_checkout_has_no_link_into_templates() -> None:
    """The quick start in a checkout must not be able to edit the packaged files."""
    for path in ROOT.iterdir():
        if path.is_symlink():
            assert ROOT / "templates" not in Path(os.path.realpath(path)).parents, path


def test_the_top_level_example_is_a_plain_copy_of_the_shipped_one() -> None:
    """contacts.yaml at the top of the checkout is the example, as a file of its own."""
    top = ROOT / "contacts.yaml"
    assert top.is_file() and not top.is_symlink()
    assert top.read_bytes() == (ROOT / "templates" / "contacts.yaml").read_bytes()


def test_runtime_files_are_ignored_by_git(tmp_path: Path) -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    names = ["mailflow.toml", "mailflow.db", "mailflow.db-wal",
             "mailflow.db-shm", "mailflow.db.bak-3", "mail/new/1.eml", "state/mailflow.db", "update.html"]
    found = subprocess.run(["git", "check-ignore", "--no-index", *names], cwd=ROOT,
                           capture_output=True, text=True, check=False)
    assert sorted(found.stdout.split()) == sorted(names), found
    kept = subprocess.run(["git", "check-ignore", "--no-index", "templates/contacts.yaml"],
                          cwd=ROOT, capture_output=True, text=True, check=False)
    assert kept.returncode == 1, "the shipped example is tracked"


def test_init_system_puts_the_state_in_the_state_directory(tmp_path: Path) -> None:
    conf, state = tmp_path / "etc", tmp_path / "lib"
    result = CliRunner().invoke(cli, ["init", "--system", "--dir", str(conf)],
                                env={"STATE_DIRECTORY": str(state)})
    assert result.exit_code == 0, result.output
    assert f"database and Maildir: {state}" in result.output
    config = load_config(conf / "mailflow.toml")
    assert config.database == state / "mailflow.db"
    assert config.maildir == state / "mail"
    assert config.contacts == conf / "contacts.yaml"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    # And it works: a declaration writes its database and its mail there, nothing in conf.
    env = {"MAILFLOW_CONFIG": str(conf / "mailflow.toml"), "MAILFLOW_NOW": "2026-11-24T10:00:00Z"}
    declared = CliRunner().invoke(cli, ["declare", "--service", "learn", "--severity", "P1",
                                        "--impact", "outage", "--summary", "down"], env=env)
    assert declared.exit_code == 0, declared.output
    assert (state / "mailflow.db").exists() and any((state / "mail" / "new").iterdir())
    assert sorted(p.name for p in conf.iterdir()) == ["contacts.yaml", "mailflow.toml"]


def test_init_system_without_the_state_directory_uses_var_lib() -> None:
    from mailflow.cli import SYSTEM_CONFIG, SYSTEM_STATE, example_config

    assert (SYSTEM_CONFIG, SYSTEM_STATE) == (Path("/etc/mailflow"), Path("/var/lib/mailflow"))
    text = example_config(SYSTEM_STATE)
    data = tomllib.loads(text)
    assert data["database"] == "/var/lib/mailflow/mailflow.db"
    assert data["maildir"] == "/var/lib/mailflow/mail"


def test_init_with_an_impossible_state_directory_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    result = CliRunner().invoke(cli, ["init", "--dir", str(tmp_path / "c"), "--state-dir",
                                      str(tmp_path / "file" / "state")])
    assert result.exit_code == 1
    assert result.output == f"Error: {tmp_path / 'file' / 'state'}: Not a directory\n"
    assert not (tmp_path / "c" / "mailflow.toml").exists(), "nothing half-written"


def unit_lines() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def test_the_unit_keeps_etc_read_only_and_state_in_var_lib() -> None:
    unit = unit_lines()
    assert unit["StateDirectory"] == ["mailflow"]
    assert unit["ProtectSystem"] == ["strict"]
    assert "ReadWritePaths" not in unit, "only the StateDirectory is writable"
    assert unit["WorkingDirectory"] == ["/var/lib/mailflow"]


def test_the_units_documentation_is_installed_with_the_package() -> None:
    [doc] = unit_lines()["Documentation"]
    [start] = unit_lines()["ExecStart"]
    prefix = Path(start.split()[0]).parent.parent  # /opt/mailflow/bin/mailflow → /opt/mailflow
    assert doc == f"file:{prefix}/share/doc/mailflow/README.md"
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "README.md" in setuptools["data-files"]["share/doc/mailflow"]
    assert "systemd/mailflow.service" in setuptools["data-files"]["share/doc/mailflow"]


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        if os.environ.get("MAILFLOW_REQUIRE_SERVICES") == "1":
            pytest.fail("systemd-analyze is missing (apt-get install systemd)")
        pytest.skip("systemd-analyze is not installed")
    # verify checks that ExecStart exists: point it at this environment's `mailflow`.
    script = Path(sys.executable).parent / "mailflow"
    assert script.exists()
    text = UNIT.read_text()
    copy = tmp_path / "mailflow.service"
    copy.write_text(re.sub(r"^ExecStart=\S+", f"ExecStart={script}", text, flags=re.MULTILINE))
    verified = subprocess.run([tool, "verify", str(copy)], capture_output=True, text=True,
                              check=False)
    assert verified.returncode == 0, verified.stderr
    assert verified.stderr.strip() == "", verified.stderr
    security = subprocess.run([tool, "security", "--offline=yes", str(copy)],
                              capture_output=True, text=True, check=False)
    m = re.search(r"Overall exposure level for mailflow.service: (\d+\.\d)", security.stdout)
    assert m, security.stdout[-500:]
    assert float(m.group(1)) <= 1.5, m.group(0)
    assert f"exposure {m.group(1)}" in text, "the unit states the figure"
    readme = (ROOT / "README.md").read_text()
    assert f"exposure {m.group(1)}" in readme, "the README states the figure"
