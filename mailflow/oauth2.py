"""OAuth2 for the mailbox and the relay: settings, the stored refresh token, fresh access tokens.

`mailflow oauth2 login` obtains a refresh token once (the provider's own flow) and stores it
0600 next to the database; `TokenSource` turns it into access tokens, refreshing a few minutes
before they expire, and `xoauth2` builds the SASL string that IMAP and SMTP send.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import clock
from .errors import MailflowError

if TYPE_CHECKING:
    from .config import Config

PROVIDERS = ("microsoft", "google", "generic")
GOOGLE_TOKEN = "https://oauth2.googleapis.com/token"
GOOGLE_AUTH = "https://accounts.google.com/o/oauth2/v2/auth"
DEFAULT_SCOPES = {
    # offline_access: Microsoft issues a refresh token only when asked for one.
    "microsoft": ("https://outlook.office.com/IMAP.AccessAsUser.All",
                  "https://outlook.office.com/SMTP.Send", "offline_access"),
    "google": ("https://mail.google.com/",),
    "generic": (),
}
# Refresh this long before the access token expires, so no login uses one about to lapse.
EARLY = timedelta(minutes=5)
TOKEN_FILE = "oauth2-token.json"


class OAuth2Error(MailflowError):
    """The token could not be obtained or refreshed."""


@dataclass(frozen=True)
class OAuth2:
    """[oauth2]: who we are to the provider, and where its token endpoint is."""

    provider: str
    client_id: str
    client_secret: str = ""  # Google's installed-app clients have one (not a secret there)
    tenant: str = "organizations"
    token_endpoint: str = ""
    scopes: tuple[str, ...] = ()

    @property
    def endpoint(self) -> str:
        """The token endpoint: the provider's, or [oauth2] token_endpoint."""
        if self.token_endpoint:
            return self.token_endpoint
        if self.provider == "microsoft":
            return f"https://login.microsoftonline.com/{self.tenant}/oauth2/v2.0/token"
        return GOOGLE_TOKEN


_KEYS = {"provider", "client_id", "client_secret", "tenant", "token_endpoint", "scopes"}


def parse(section: dict[str, Any], fail: Callable[[str, str], Exception]) -> OAuth2 | None:
    """[oauth2] checked; None when the section is absent."""
    if not section:
        return None
    for key, value in section.items():
        if key not in _KEYS:
            raise fail(f"oauth2.{key}", f"unknown key; expected one of {', '.join(sorted(_KEYS))}")
        if key == "scopes":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise fail("oauth2.scopes", f"must be a list of strings, got {value!r}")
        elif not isinstance(value, str):
            raise fail(f"oauth2.{key}", f"must be a string, got {value!r}")
    provider = section.get("provider", "")
    if provider not in PROVIDERS:
        raise fail("oauth2.provider", f"{provider!r}: use one of {', '.join(PROVIDERS)}")
    if not section.get("client_id"):
        raise fail("oauth2.client_id", "missing: the application (client) id registered "
                                       "with the provider")
    if provider == "generic" and not section.get("token_endpoint"):
        raise fail("oauth2.token_endpoint", "missing: provider = \"generic\" needs the URL of "
                                            "its token endpoint")
    scopes = tuple(section.get("scopes") or DEFAULT_SCOPES[provider])
    return OAuth2(provider=provider, client_id=section["client_id"],
                  client_secret=section.get("client_secret", ""),
                  tenant=section.get("tenant", "organizations"),
                  token_endpoint=section.get("token_endpoint", ""), scopes=scopes)


def xoauth2(user: str, access_token: str) -> str:
    """The base64 SASL XOAUTH2 initial response for `user` with `access_token`."""
    raw = f"user={user}\x01auth=Bearer {access_token}\x01\x01"
    return base64.b64encode(raw.encode("utf-8")).decode("ascii")


def token_path(state_dir: Path) -> Path:
    """Where the refresh token is kept: in the instance's state folder (`Config.state_dir`)."""
    return state_dir / TOKEN_FILE


def save(path: Path, data: dict[str, Any]) -> None:
    """Write the token file 0600 (created so, never widened), replacing it atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _post(url: str, form: dict[str, str]) -> dict[str, Any]:
    """POST a form to the token endpoint; its JSON answer, or OAuth2Error."""
    body = urllib.parse.urlencode(form).encode("ascii")
    request = urllib.request.Request(url, data=body, headers={
        "Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            error = json.loads(exc.read() or b"{}")
        except ValueError:
            error = {}
        code = error.get("error", f"HTTP {exc.code}")
        said = (str(error.get("error_description") or "").splitlines() or [""])[0]
        if code in ("invalid_grant", "invalid_client", "unauthorized_client"):
            raise OAuth2Error(f"token endpoint {url} refused the stored refresh token ({code}"
                              f"{': ' + said if said else ''}); run "
                              f"`mailflow oauth2 login` to sign in again") from None
        raise OAuth2Error(f"token endpoint {url} answered {code}; try again later") from None
    except (OSError, ValueError) as exc:
        raise OAuth2Error(f"token endpoint {url} unreachable: {exc}") from None
    if not isinstance(answer, dict) or "access_token" not in answer:
        raise OAuth2Error(f"token endpoint {url} gave no access_token")
    return answer


class TokenSource:
    """A callable giving a valid access token, refreshed before it expires (one refresh at once)."""

    def __init__(self, settings: OAuth2, path: Path,
                 now: Callable[[], datetime] = clock.now) -> None:
        self.settings, self.path, self.now = settings, path, now

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise OAuth2Error(f"{self.path}: no OAuth2 token yet; run `mailflow oauth2 login`"
                              ) from None
        except ValueError as exc:
            raise OAuth2Error(f"{self.path}: not a token file ({exc}); run "
                              f"`mailflow oauth2 login`") from None
        if not isinstance(data, dict) or not data.get("refresh_token"):
            raise OAuth2Error(f"{self.path}: no refresh token; run `mailflow oauth2 login`")
        return data

    def __call__(self) -> str:
        """The current access token, refreshed first when it expires within EARLY."""
        # One refresh at a time per token file, for every source on it (outbound mail builds
        # one per delivery, the IMAP reader its own, a CLI command another): a provider that
        # rotates refresh tokens must never be sent one that another refresh already used.
        with _token_file_lock(self.path):
            data = self._load()
            now = self.now()
            expires = data.get("expires_at")
            if data.get("access_token") and expires and \
                    clock.parse_time(expires) - EARLY > now:
                return str(data["access_token"])
            s = self.settings
            form = {"grant_type": "refresh_token", "refresh_token": data["refresh_token"],
                    "client_id": s.client_id}
            if s.client_secret:
                form["client_secret"] = s.client_secret
            if s.scopes:
                form["scope"] = " ".join(s.scopes)
            answer = _post(s.endpoint, form)
            save(self.path, stored(answer, now, data["refresh_token"]))
            return str(answer["access_token"])


@contextlib.contextmanager
def _token_file_lock(path: Path) -> Iterator[None]:
    """Hold an flock on `<token file>.lock` (0600). Each call opens the file anew, and
    flock locks belong to the open file, so this serialises threads of one process as well
    as processes: the second caller reads what the first saved."""
    try:
        fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    except FileNotFoundError:  # no folder, so no token either
        raise OAuth2Error(f"{path}: no OAuth2 token yet; run `mailflow oauth2 login`") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def stored(answer: dict[str, Any], now: datetime, refresh_token: str = "") -> dict[str, Any]:
    """What the token file keeps of a token answer (a rotated refresh token replaces ours)."""
    lifetime = int(answer.get("expires_in", 3600))
    return {"refresh_token": answer.get("refresh_token") or refresh_token,
            "access_token": answer["access_token"],
            "expires_at": (now + timedelta(seconds=lifetime)).isoformat()}


def token_source(config: Config) -> TokenSource | None:
    """The access-token callable for [outbound] and [imap] (XOAUTH2), or None without [oauth2]."""
    if config.oauth2 is None:
        return None
    return TokenSource(config.oauth2, token_path(config.state_dir()))
