"""Read-only commands must not pay for the libraries only sending and editing need."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("jinja2", "premailer", "aiosmtplib", "aiosmtpd", "asyncio", "ruamel", "mailparser",
         "aiohttp", "imapclient")
ENV = {**os.environ, "MAILFLOW_NOW": "2026-11-24T10:00:00Z"}


def loaded_after(code: str, cwd: Path | None = None) -> set[str]:
    """The packages of HEAVY that a fresh interpreter holds after running `code`."""
    probe = (f"{code}\nimport json, sys\n"
             f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r})))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=cwd, env=ENV, check=True,
                         capture_output=True, text=True).stdout
    return set(json.loads(out.splitlines()[-1])) - _BASELINE


# What `import click, peewee` loads itself is not mailflow's to avoid: peewee imports psycopg,
# and psycopg asyncio, whenever psycopg is installed (the PostgreSQL extra). The start-up
# target is measured against that same import.
_BASELINE: set[str] = set()
_BASELINE = loaded_after("import click, peewee")


def test_importing_the_cli_loads_no_heavy_library() -> None:
    assert loaded_after("import mailflow.cli") == set()


@pytest.mark.parametrize("argv", [["list"], ["list", "--all", "--json"], ["show", "INC-1"]])
def test_list_and_show_load_no_heavy_library(tmp_path: Path, argv: list[str]) -> None:
    cli = [sys.executable, "-m", "mailflow.cli"]
    subprocess.run([*cli, "init"], cwd=tmp_path, env=ENV, check=True, capture_output=True)
    subprocess.run([*cli, "declare", "--service", "learn", "--severity", "P1", "--impact",
                    "outage", "--summary", "Learn returns 502", "--lead", "ana@example.org",
                    "--queue-only"], cwd=tmp_path, env=ENV, check=True, capture_output=True)
    code = ("import sys, mailflow.cli\n"
            f"sys.argv = ['mailflow', *{argv!r}]\n"
            "try:\n    mailflow.cli.main()\n"
            "except SystemExit as exc:\n    assert not exc.code, exc.code\n")
    assert loaded_after(code, cwd=tmp_path) == set()


def test_the_probe_sees_a_heavy_import() -> None:
    # The guard can fail: rendering an email does load Jinja2.
    assert "jinja2" in loaded_after("import mailflow.render as r\nr.Renderer()")
