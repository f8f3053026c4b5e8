"""`mailflow oauth2 login`: obtain the refresh token once, with the provider's own sign-in flow."""

from __future__ import annotations

import base64
import hashlib
import secrets
import urllib.parse
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import click

from . import clock, oauth2
from .config import load_config
from .errors import ConfigError

pass_state = click.pass_obj  # cli.State; not imported (cli.py registers this group)


@click.group("oauth2")
def oauth2_group() -> None:
    """OAuth2 sign-in for the mailbox ([imap]) and the relay ([outbound]).

    \b
    Example: once, after adding [oauth2] to mailflow.toml
      mailflow oauth2 login
    """


def _settings(state: Any) -> tuple[oauth2.OAuth2, Any]:
    config = load_config(state.config_path)
    if config.oauth2 is None:
        raise ConfigError(f"{state.config_path}: no [oauth2] section; add provider and "
                          "client_id first (see the README, OAuth2)")
    return config.oauth2, oauth2.token_path(config.state_dir())


@oauth2_group.command()
@pass_state
def login(state: Any) -> None:
    """Sign in once; the refresh token is stored 0600 beside the database
    (beside the Maildir with a PostgreSQL database).

    \b
    microsoft: a device code to enter at the address shown (MSAL)
    google:    a browser sign-in that returns to a loopback address
    generic:   paste a refresh token obtained from your provider
    """
    settings, path = _settings(state)
    if settings.provider == "microsoft":
        answer = _microsoft(settings)
    elif settings.provider == "google":
        answer = _google(settings)
    else:
        token = click.prompt("refresh token", hide_input=True).strip()
        answer = None
        oauth2.save(path, {"refresh_token": token})
        oauth2.TokenSource(settings, path)()  # proves it works now, not at 3 a.m.
    if answer is not None:
        if not answer.get("refresh_token"):
            raise oauth2.OAuth2Error("the provider gave no refresh token; for Microsoft ask for "
                                     "the offline_access scope, for Google access_type=offline")
        oauth2.save(path, oauth2.stored(answer, clock.now()))
    click.echo(f"signed in; token stored in {path}")


def _microsoft(settings: oauth2.OAuth2) -> dict[str, Any]:
    """MSAL's device-code flow: the user enters a code at microsoft.com/devicelogin."""
    import msal  # heavy, and only needed here

    app = msal.PublicClientApplication(
        settings.client_id, authority=f"https://login.microsoftonline.com/{settings.tenant}")
    # MSAL adds offline_access itself and refuses it in the list.
    scopes = [s for s in settings.scopes if s not in ("offline_access", "openid", "profile")]
    flow = app.initiate_device_flow(scopes=scopes)
    if "user_code" not in flow:
        raise oauth2.OAuth2Error(f"Microsoft refused the device-code request: "
                                 f"{flow.get('error_description', flow)}")
    click.echo(flow["message"], err=True)
    answer: dict[str, Any] = app.acquire_token_by_device_flow(flow)
    if "access_token" not in answer:
        raise oauth2.OAuth2Error(f"Microsoft sign-in failed: "
                                 f"{answer.get('error_description', answer.get('error'))}")
    return answer


def _google(settings: oauth2.OAuth2) -> dict[str, Any]:
    """Google's installed-app flow: sign in in a browser, which returns to 127.0.0.1 (PKCE)."""
    verifier = secrets.token_urlsafe(64)
    challenge = base64.urlsafe_b64encode(
        hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    state_value = secrets.token_urlsafe(16)
    got: dict[str, str] = {}

    class Back(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
            if query.get("state") == state_value:
                got.update(query)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.end_headers()
            self.wfile.write(b"mailflow: signed in, you can close this page.\n")

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Back)
    redirect = f"http://127.0.0.1:{server.server_port}/"
    url = oauth2.GOOGLE_AUTH + "?" + urllib.parse.urlencode({
        "client_id": settings.client_id, "redirect_uri": redirect, "response_type": "code",
        "scope": " ".join(settings.scopes), "access_type": "offline", "prompt": "consent",
        "state": state_value, "code_challenge": challenge, "code_challenge_method": "S256"})
    click.echo(f"Open this address in a browser on this machine and sign in:\n{url}", err=True)
    server.timeout = 10
    deadline = clock.monotonic() + 600  # ten minutes to sign in
    while not got and clock.monotonic() < deadline:
        server.handle_request()  # the browser may also ask for /favicon.ico first
    server.server_close()
    if "code" not in got:
        raise oauth2.OAuth2Error(f"Google sign-in did not complete: {got.get('error', 'no code')}")
    form = {"grant_type": "authorization_code", "code": got["code"], "redirect_uri": redirect,
            "client_id": settings.client_id, "code_verifier": verifier}
    if settings.client_secret:
        form["client_secret"] = settings.client_secret
    return oauth2._post(settings.endpoint, form)
