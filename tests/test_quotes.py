"""mailflow.quotes: every reply fixture (one folder per family) gives exactly its new text."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from mailflow import reply_patterns
from mailflow.cli import cli
from mailflow.quotes import extract_text, family_table, fixtures
from mailflow.replies import extract_text as replies_extract_text
from mailflow.replies import parse_reply

ROOT = Path(__file__).parent / "fixtures" / "replies"
FIXTURES = fixtures(ROOT)
README = Path(__file__).parent.parent / "README.md"


def _expected(path: Path) -> str:
    return path.with_suffix(".expected").read_text(encoding="utf-8").strip("\n")


@pytest.mark.parametrize(
    "path", [p for _, p in FIXTURES], ids=[f"{f}/{p.name}" for f, p in FIXTURES]
)
def test_fixture_gives_exactly_the_new_text(path: Path) -> None:
    if path.suffix == ".eml":
        got = parse_reply(path.read_bytes()).text
    else:
        got = extract_text(path.read_text(encoding="utf-8"))
    assert got == _expected(path)


def test_enough_fixtures_in_every_family() -> None:
    families: dict[str, int] = {}
    for family, _ in FIXTURES:
        families[family] = families.get(family, 0) + 1
    assert len(FIXTURES) >= 150
    assert all(count >= 5 for count in families.values()), families
    # Named after client and language: <client>_<lang>_<what>.
    assert all(re.fullmatch(r"[a-z0-9]+_[a-z]{2,4}_[a-z0-9_]+", p.stem) for _, p in FIXTURES)


def test_replies_module_delegates() -> None:
    body = "Done.\n\nOn Tue, 24 Nov 2026 at 10:00, Ana <ana@x.org> wrote:\n> old\n"
    assert replies_extract_text(body) == extract_text(body) == "Done."


def test_attribution_verbs_cover_at_least_25_languages() -> None:
    assert len(reply_patterns.WROTE_VERBS) >= 25
    assert len(reply_patterns.HEADER_LABELS) >= 25
    assert len(reply_patterns.SENT_FROM) >= 20


@pytest.mark.parametrize(
    "name",
    [
        "full_email/gmail_pl_napisal_base64.eml",
        "full_email/apple_ja_message_iso2022.eml",
        "full_email/outlook_en_mobile_signature_commands.eml",
    ],
)
def test_parse_reply_cli_json(name: str) -> None:
    path = ROOT / name
    result = CliRunner().invoke(cli, ["parse-reply", str(path), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["text"] == _expected(path)


def test_cli_json_carries_the_commands_apart_from_the_text() -> None:
    path = ROOT / "full_email" / "outlook_en_mobile_signature_commands.eml"
    data = json.loads(CliRunner().invoke(cli, ["parse-reply", str(path), "--json"]).output)
    assert data["commands"] == [{"name": "severity", "value": "P2"}]
    assert "Outlook" not in data["text"] and "Incident Desk" not in data["text"]


def test_readme_table_is_the_generated_one() -> None:
    # Regenerate with: python -m mailflow.quotes --table tests/fixtures/replies
    assert family_table(ROOT) in README.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "body",
    [
        "x " * 60_000 + " On Mon, 1 Jan 2026, A <a@b.c> wrote:\n> q\n",
        ("On " + "1 " * 3000 + "\n") * 30,
        ("From: " + "a@b " * 2000 + "\nSent: " + "9 " * 2000 + "\n") * 30,
        ("Thanks,\n" + "Bob " * 3000 + "\n") * 30,
        ("reply On " * 2000 + "wrote:\n") * 30,
        ("- " + "a" * 5000 + "\n") * 30 + "-roman\n",
        "\n".join(f"line {i} On Mon, {i} Jan 2026, A <a{i}@b.c>" for i in range(20_000)),
    ],
    ids=["long-line", "long-on", "long-block", "long-signoff", "many-leads", "dash", "many-lines"],
)
def test_hostile_bodies_are_handled(body: str) -> None:
    # Every pattern is bounded and sees a capped window of a line: a backtracking blow-up
    # here would hang the suite (`python bench/quotes.py` measures the cost).
    text = extract_text(body)
    assert isinstance(text, str) and "> q" not in text
