"""mailflow.toml: defaults, and errors that name the file and the key."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from mailflow import clock, tokens
from mailflow.config import load_config
from mailflow.errors import ConfigError, InvalidInput


def load(tmp_path: Path, text: str):  # noqa: ANN201
    path = tmp_path / "mailflow.toml"
    if "secret" not in text:  # TOML keys before any table
        text = 'secret = "0123456789abcdef0123"\n' + text
    path.write_text(text, encoding="utf-8")
    return load_config(path)


def test_defaults_and_paths_relative_to_the_file(tmp_path: Path) -> None:
    cfg = load(tmp_path, "")
    assert cfg.database == tmp_path / "mailflow.db"
    assert cfg.maildir == tmp_path / "mail"
    assert cfg.inbound.host == "127.0.0.1", "inbound binds loopback unless told otherwise"
    assert cfg.cadence.update_every["P1"] == timedelta(hours=1)
    assert cfg.cadence.escalate["P3"] == (timedelta(hours=4), timedelta(days=1))
    assert cfg.outbound.host == "", "no relay: the Maildir"


@pytest.mark.parametrize(("text", "where"), [
    ("colour = 1", "colour: unknown key"),
    ("[outbound]\nport = 99999", "outbound.port: 99999 is not a TCP port"),
    ("[outbound]\nport = \"x\"", "outbound.port: must be int"),
    ("[inbound]\nmax_size = 10", "inbound.max_size"),
    ("[cadence]\nreminder_before = \"soon\"", "cadence.reminder_before"),
    ("[cadence]\nupdate_every = {P7 = \"1h\"}", "cadence.update_every.P7: unknown severity"),
    ("[cadence]\nescalate = {P1 = \"4h\"}", "cadence.escalate.P1: must be a list"),
    ('reply_to = "desk+x@example.org"', "reply_to: the base address must not contain '+'"),
    ('from = "nobody"', "from: 'nobody' is not an email address"),
    ("[outbound", "not valid TOML"),
    ('secret = "short"', "secret: too short"),
    ('[cadence]\nreminder_before = "45m"\nupdate_every = {P0 = "30m"}',
     "cadence.reminder_before: must be shorter"),
    ('secret = ""', "secret: empty"),
    ('templates = "nowhere"', "templates: "),
    ('[outbound]\nhost = "smtp.example.org"\nstarttls = false\nusername = "u"\npassword = "p"',
     "outbound.username: the password would cross the network in clear"),
])
def test_errors_name_file_and_key(tmp_path: Path, text: str, where: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, text)
    assert str(err.value).startswith(str(tmp_path / "mailflow.toml"))
    assert where in str(err.value)


def test_escalate_per_severity(tmp_path: Path) -> None:
    cfg = load(tmp_path, '[cadence]\nescalate = {P0 = ["2h", "1h"]}')
    assert cfg.cadence.escalate["P0"] == (timedelta(hours=1), timedelta(hours=2))
    assert cfg.cadence.escalate["P1"] == (timedelta(hours=4), timedelta(days=1))


def test_clock_honours_mailflow_now(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILFLOW_NOW", "2026-11-24T10:00:00+01:00")
    assert clock.now().isoformat() == "2026-11-24T09:00:00+00:00"
    monkeypatch.setenv("MAILFLOW_NOW", "yesterday")
    with pytest.raises(InvalidInput, match="MAILFLOW_NOW"):
        clock.now()


@pytest.mark.parametrize(("text", "minutes"), [("30m", 30), ("1h30m", 90), ("2d", 2880),
                                               ("45 min", 45)])
def test_durations(text: str, minutes: int) -> None:
    assert clock.parse_duration(text) == timedelta(minutes=minutes)


@pytest.mark.parametrize("text", ["", "soon", "0m", "1h soon", "-5m"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(InvalidInput):
        clock.parse_duration(text)


def test_tokens_are_signed_and_checked() -> None:
    token = tokens.sign(42, "s3cret")
    assert tokens.verify(token, ["s3cret"]) == 42
    assert tokens.verify(token, ["other"]) is None
    assert tokens.verify(token, ["new", "s3cret"]) == 42, "an old secret may still be accepted"
    assert tokens.verify("42-" + "0" * 20, ["s3cret"]) is None
    assert tokens.verify(token.replace("42-", "43-"), ["s3cret"]) is None
    assert tokens.verify("garbage", ["s3cret"]) is None
    assert tokens.split_address(f"Desk+{token}@Example.org") == ("desk", token, "example.org")


def test_a_rotated_secret_keeps_old_tokens_valid_for_a_grace_period(tmp_path: Path) -> None:
    from datetime import datetime, timezone

    cfg = load(tmp_path, 'secret = "new-secret-0123456789"\nprevious_secret = "old-secret-0123456789"\n'
                         'previous_secret_until = "2026-12-01T00:00:00Z"\n')
    before = datetime(2026, 11, 30, tzinfo=timezone.utc)
    after = datetime(2026, 12, 1, tzinfo=timezone.utc)
    old_token = tokens.sign(7, "old-secret-0123456789")
    assert tokens.verify(old_token, cfg.secrets(before)) == 7
    assert tokens.verify(old_token, cfg.secrets(after)) is None
    assert tokens.verify(tokens.sign(7, "new-secret-0123456789"), cfg.secrets(after)) == 7


def test_a_missing_secret_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "mailflow.toml"
    path.write_text("", encoding="utf-8")
    with pytest.raises(ConfigError, match="secret: missing; `mailflow init`"):
        load_config(path)
