"""OAuth2: refresh against a real local token endpoint, XOAUTH2 against a real aiosmtpd server."""

from __future__ import annotations

import asyncio
import base64
import json
import stat
import threading
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult
from click.testing import CliRunner

from mailflow.app import Mailflow
from mailflow.cli import cli
from mailflow.config import Outbound, config_from_dict, load_config
from mailflow.errors import ConfigError
from mailflow.oauth2 import OAuth2, OAuth2Error, TokenSource, save, token_path, xoauth2
from mailflow.outbox import RelayDown, SMTPTransport
from mailflow.testing import Sink, SinkHandler

from .conftest import T0, write_config
from .helpers import declare

USER = "incidents@example.org"


def settings(endpoint: str) -> OAuth2:
    return OAuth2(provider="generic", client_id="mailflow-client", token_endpoint=endpoint,
                  scopes=("mail.send",))


def grant(httpserver: Any, token: str = "fresh-token", refresh: str = "") -> None:
    answer: dict[str, Any] = {"access_token": token, "token_type": "Bearer", "expires_in": 3600}
    if refresh:
        answer["refresh_token"] = refresh
    httpserver.serve_content(json.dumps(answer), 200, {"Content-Type": "application/json"})


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_xoauth2_string() -> None:
    raw = base64.b64decode(xoauth2("ana@example.org", "ya29.tok"))
    assert raw == b"user=ana@example.org\x01auth=Bearer ya29.tok\x01\x01"


def test_access_token_is_reused_then_refreshed_before_it_expires(tmp_path: Path,
                                                                httpserver: Any) -> None:
    path = token_path(tmp_path)
    save(path, {"refresh_token": "r1", "access_token": "old",
                "expires_at": (T0 + timedelta(hours=1)).isoformat()})
    assert mode(path) == 0o600
    grant(httpserver, "new", refresh="r2")
    clock = [T0]
    source = TokenSource(settings(httpserver.url), path, now=lambda: clock[0])

    assert source() == "old"  # an hour left: no request
    assert httpserver.requests == []

    clock[0] = T0 + timedelta(minutes=56)  # four minutes left: refreshed first
    assert source() == "new"
    assert len(httpserver.requests) == 1
    form = httpserver.requests[0].form
    assert (form["grant_type"], form["refresh_token"], form["client_id"], form["scope"]) == (
        "refresh_token", "r1", "mailflow-client", "mail.send")
    kept = json.loads(path.read_text())
    assert kept["refresh_token"] == "r2"  # the provider rotated it
    assert kept["expires_at"] == (clock[0] + timedelta(hours=1)).isoformat()
    assert mode(path) == 0o600

    assert source() == "new"  # the new token is valid for an hour: no second request
    assert len(httpserver.requests) == 1


def test_invalid_grant_tells_the_user_to_log_in_again(tmp_path: Path, httpserver: Any) -> None:
    path = token_path(tmp_path)
    save(path, {"refresh_token": "revoked"})
    httpserver.serve_content(json.dumps({"error": "invalid_grant",
                                         "error_description": "AADSTS70008: expired\nTrace: x"}),
                             400, {"Content-Type": "application/json"})
    with pytest.raises(OAuth2Error) as error:
        TokenSource(settings(httpserver.url), path, now=lambda: T0)()
    text = str(error.value)
    assert "invalid_grant: AADSTS70008: expired" in text
    assert "run `mailflow oauth2 login`" in text and "\n" not in text
    assert json.loads(path.read_text())["refresh_token"] == "revoked"  # nothing lost


def test_no_token_file_says_to_log_in(tmp_path: Path) -> None:
    with pytest.raises(OAuth2Error, match=r"no OAuth2 token yet; run `mailflow oauth2 login`"):
        TokenSource(settings("http://127.0.0.1:9/"), tmp_path / "none.json")()


@dataclass
class XOAuth2Handler(SinkHandler):
    """The sink, requiring AUTH XOAUTH2 with one of `tokens` for USER."""

    tokens: set[str] = field(default_factory=set)
    seen: list[str] = field(default_factory=list)

    async def handle_RCPT(self, server: SMTP, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        if not session.authenticated:  # (aiosmtpd's auth_required warns without TLS)
            return "530 5.7.0 Authentication required"
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:  # noqa: N802
        raw = base64.b64decode(args[1]).decode()
        self.seen.append(raw)
        fields = dict(part.split("=", 1) for part in raw.split("\x01") if part)
        ok = fields.get("user") == USER and fields.get("auth", "").removeprefix(
            "Bearer ") in self.tokens
        return AuthResult(success=ok, handled=False,
                          message=None if ok else "535 5.7.8 invalid token")


def xoauth2_sink(*tokens: str) -> Sink:
    return Sink(handler=XOAuth2Handler(tokens=set(tokens)), auth_require_tls=False)


def test_outbound_mail_authenticates_with_xoauth2(tmp_path: Path, httpserver: Any) -> None:
    grant(httpserver, "good-token")
    with xoauth2_sink("good-token") as sink:
        write_config(tmp_path, sink.port, extra=(
            f'[oauth2]\nprovider = "generic"\nclient_id = "mailflow-client"\n'
            f'token_endpoint = "{httpserver.url}"\n'))
        config = tmp_path / "mailflow.toml"
        config.write_text(config.read_text().replace(
            "starttls = false\n", f'starttls = false\nusername = "{USER}"\n'))
        app = Mailflow(load_config(config))
        try:
            save(token_path(app.config.database.parent), {"refresh_token": "r1"})
            declare(app)
            report = app.deliver_now(T0)
        finally:
            app.close()
        assert report.sent == len(sink.received) == 3, report
        assert sink.handler.seen[0] == f"user={USER}\x01auth=Bearer good-token\x01\x01"
        assert httpserver.requests[0].form["refresh_token"] == "r1"


def test_a_refused_token_keeps_the_mail_and_says_so(httpserver: Any, tmp_path: Path) -> None:
    path = token_path(tmp_path)
    save(path, {"refresh_token": "r1"})
    grant(httpserver, "stale-token")
    with xoauth2_sink("good-token") as sink:
        transport = SMTPTransport(
            Outbound(host="127.0.0.1", port=sink.port, starttls=False, username=USER),
            TokenSource(settings(httpserver.url), path, now=lambda: T0))

        async def send() -> None:
            try:
                await transport.send(USER, "ana@example.org", b"Subject: x\r\n\r\nbody\r\n")
            finally:
                await transport.close()

        with pytest.raises(RelayDown, match="refused login"):
            asyncio.run(send())
        assert sink.received == []


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    for extra, key in (('[oauth2]\nprovider = "yahoo"\nclient_id = "x"\n', "oauth2.provider"),
                       ('[oauth2]\nprovider = "generic"\nclient_id = "x"\n',
                        "oauth2.token_endpoint"),
                       ('[oauth2]\nprovider = "google"\n', "oauth2.client_id")):
        write_config(tmp_path, None, extra=extra)
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config(tmp_path / "mailflow.toml")
    write_config(tmp_path, None, extra='[oauth2]\nprovider = "microsoft"\nclient_id = "x"\n')
    oauth = load_config(tmp_path / "mailflow.toml").oauth2
    assert oauth is not None and oauth.endpoint == \
        "https://login.microsoftonline.com/organizations/oauth2/v2.0/token"
    assert "https://outlook.office.com/SMTP.Send" in oauth.scopes


def test_login_generic_stores_the_token_0600_and_proves_it(tmp_path: Path,
                                                           httpserver: Any) -> None:
    grant(httpserver, "first-token")
    write_config(tmp_path, None, extra=(f'[oauth2]\nprovider = "generic"\nclient_id = "c"\n'
                                        f'token_endpoint = "{httpserver.url}"\n'))
    result = CliRunner().invoke(cli, ["--config", str(tmp_path / "mailflow.toml"), "oauth2",
                                      "login"], input="my-refresh\n",
                                env={"MAILFLOW_NOW": T0.isoformat()})
    assert result.exit_code == 0, result.output
    path = tmp_path / "state" / "oauth2-token.json"
    assert "signed in" in result.output and mode(path) == 0o600
    assert json.loads(path.read_text())["access_token"] == "first-token"
    assert httpserver.requests[0].form["refresh_token"] == "my-refresh"


def test_two_sources_on_one_file_refresh_once(tmp_path: Path, httpserver: Any) -> None:
    # Outbound mail and the IMAP reader each hold a source; a provider that rotates refresh
    # tokens must not be sent r1 twice (the second refresh would be refused).
    path = token_path(tmp_path)
    save(path, {"refresh_token": "r1", "access_token": "old",
                "expires_at": T0.isoformat()})  # expired: the next call refreshes
    grant(httpserver, "new", refresh="r2")
    sources = [TokenSource(settings(httpserver.url), path, now=lambda: T0) for _ in range(2)]
    start = threading.Barrier(8)
    got: list[str] = []

    def call(source: TokenSource) -> None:
        start.wait()
        got.append(source())

    threads = [threading.Thread(target=call, args=(sources[i % 2],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == ["new"] * 8
    assert [r.form["refresh_token"] for r in httpserver.requests] == ["r1"]
    assert json.loads(path.read_text())["refresh_token"] == "r2"
    assert mode(path.with_name(path.name + ".lock")) == 0o600


def test_with_postgresql_the_token_lives_in_the_state_folder_not_etc(tmp_path: Path) -> None:
    # The systemd unit makes /etc/mailflow read-only; the Maildir's folder is its state folder.
    config = config_from_dict({"database": "postgresql://mailflow@db.example.org/mailflow",
                               "maildir": str(tmp_path / "state" / "mail"), "secret": "s" * 20},
                              tmp_path / "etc" / "mailflow.toml")
    assert token_path(config.state_dir()) == tmp_path / "state" / "oauth2-token.json"
    sqlite = config_from_dict({"database": str(tmp_path / "db" / "mailflow.db"),
                               "secret": "s" * 20}, tmp_path / "etc" / "mailflow.toml")
    assert token_path(sqlite.state_dir()) == tmp_path / "db" / "oauth2-token.json"
