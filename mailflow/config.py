"""mailflow.toml + environment → one frozen Config. Errors name the file and the key."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.utils import parseaddr
from pathlib import Path
from typing import Any

from .addresses import Rules, check
from .clock import parse_duration, parse_time
from .errors import ConfigError, InvalidInput
from .oauth2 import OAuth2
from .oauth2 import parse as parse_oauth2

SEVERITIES = ("P0", "P1", "P2", "P3")
DEFAULT_UPDATE_EVERY = {"P0": "30m", "P1": "1h", "P2": "4h", "P3": "1d"}

EXAMPLE_TOML = """\
# mailflow configuration. Every key is optional; these are the defaults.
# Paths are relative to this file.
database = "mailflow.db"          # or "postgresql://mailflow@db.example.org/mailflow"
contacts = "contacts.yaml"
# templates = "templates"        # a folder of your own overrides of the built-in templates
from = "Incident Desk <incidents@example.org>"
reply_to = "incidents@example.org"   # replies go to incidents+TOKEN@example.org
secret = "{secret}"   # signs reply tokens; keep it private
# To rotate: move the old secret here; its tokens stay valid until the date below.
# previous_secret = "..."
# previous_secret_until = 2026-12-31T00:00:00Z
# maildir = "mail"               # where mail goes while [outbound] has no host
# allow_local_domains = false    # true: addresses at dotless domains (ana@localhost), for tests

[outbound]
# host = "smtp.example.org"      # unset: emails are written to the Maildir instead
port = 587
starttls = true
# username = "mailflow"
# password = "..."
concurrency = 2                  # parallel SMTP connections
retry_for = "1d"                 # give up on a temporarily failing email after this long
max_message_size = 1048576       # bytes; no email is bigger (older updates are left out)
# cafile = "relay-ca.pem"        # the relay's private CA (default: the system's CAs)
# smtputf8 = false               # true: the relay takes non-ASCII addresses

[inbound]
mode = "smtp"                    # "imap": read replies from a mailbox instead (see [imap])
host = "127.0.0.1"               # replies come in here; keep it on loopback behind your MTA
port = 8025
max_size = 10485760              # bytes; bigger replies get 552
# tls_cert = "cert.pem"          # with tls_key: STARTTLS is offered
# tls_key = "key.pem"
# require_tls = false            # true: no mail before STARTTLS
process_timeout = 2              # seconds to parse a message and reach the database, else 451
max_connections = 100            # more clients at once are answered 421
max_pending_bytes = 104857600    # bytes of DATA being received, all clients together
idle_timeout = 60                # seconds of client silence before disconnecting
max_parts = 1000                 # MIME parts in one message; more get 552
max_recipients = 50              # RCPT TO per message; more get 452
receipts = "commands"            # receipt to the sender after commands or refusals; "always"
send_now_every = "5m"            # `send now` by reply is honoured at most this often
# username = "mta"               # with password: senders must AUTH (over TLS)
# password = "..."

# [imap]                         # with [inbound] mode = "imap"
# host = "imap.example.org"
# port = 993                     # default: 993 for tls = "implicit", else 143
# tls = "implicit"               # "starttls", or "none" (loopback only)
# username = "incidents@example.org"
# password = "..."
# folder = "INBOX"               # processed mail moves to mailflow/posted|refused|ignored
# poll_every = "60s"             # when the server has no IDLE, and as a safety net

[cadence]
update_every = {{P0 = "30m", P1 = "1h", P2 = "4h", P3 = "1d"}}
reminder_before = "10m"
escalate = ["4h", "1d"]
handover_after = "7h"

[emails]
subject_style = "thread"         # "status": the state in every subject (splits Gmail threads)
updates_in_full = 10             # newest updates carried in full; a line counts the others
update_max_chars = 20000         # longer update texts are cut in emails (kept in the record)
"""


@dataclass(frozen=True)
class Outbound:
    """Where outgoing mail goes: an SMTP relay, or the Maildir when `host` is empty."""

    host: str = ""
    port: int = 587
    starttls: bool = True
    username: str = ""
    password: str = ""
    concurrency: int = 2
    timeout: float = 30.0
    retry_for: timedelta = timedelta(days=1)
    cafile: Path | None = None  # a private CA for the relay's certificate; default: the system's
    smtputf8: bool = False  # the relay takes non-ASCII addresses (RFC 6531)
    max_message_size: int = 1024 * 1024  # no email is bigger (the relay's SIZE may lower it)


@dataclass(frozen=True)
class Inbound:
    """The SMTP server that receives replies."""

    mode: str = "smtp"  # "imap": replies are read from the [imap] mailbox instead
    host: str = "127.0.0.1"
    port: int = 8025
    max_size: int = 10 * 1024 * 1024
    tls_cert: Path | None = None  # with tls_key: STARTTLS is offered
    tls_key: Path | None = None
    require_tls: bool = False  # refuse mail before STARTTLS
    username: str = ""  # with password: AUTH (over TLS) is required
    password: str = ""
    # Limits that keep one sender from stalling or exhausting the daemon.
    process_timeout: float = 2.0  # seconds to parse a message and get the database, else 451
    max_connections: int = 100  # more at once are answered 421
    max_pending_bytes: int = 100 * 1024 * 1024  # DATA being received, all connections together
    idle_timeout: float = 60.0  # seconds a client may stay silent before it is disconnected
    max_parts: int = 1000  # MIME parts (nested multiparts included) in one message, else 552
    max_recipients: int = 50  # RCPT TO per message, else 452
    # Replies: who gets a receipt, and how often `send now` is honoured per incident.
    receipts: str = "commands"  # "commands": after commands or refusals; "always": every reply
    send_now_every: timedelta = timedelta(minutes=5)


@dataclass(frozen=True)
class Imap:
    """The mailbox replies are read from when [inbound] mode = "imap"."""

    host: str = ""
    port: int = 993
    tls: str = "implicit"  # implicit | starttls | none (loopback only)
    username: str = ""
    password: str = ""
    folder: str = "INBOX"
    poll_every: timedelta = timedelta(seconds=60)


IMAP_TLS = ("implicit", "starttls", "none")
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _imap(section: dict[str, Any], mode: str, fail: Callable[[str, str], ConfigError],
          oauth2: bool = False) -> Imap:
    """[imap], checked; required when [inbound] mode = "imap"."""
    allowed = {"host", "port", "tls", "username", "password", "folder", "poll_every"}
    for key, value in section.items():
        if key not in allowed:
            raise fail(f"imap.{key}", f"unknown key; expected one of {', '.join(sorted(allowed))}")
        if key in ("port",) and (isinstance(value, bool) or not isinstance(value, int)):
            raise fail(f"imap.{key}", f"must be a whole number, got {value!r}")
        if key not in ("port",) and not isinstance(value, str):
            raise fail(f"imap.{key}", f"must be a string, got {value!r}")
    tls = section.get("tls", "implicit")
    if tls not in IMAP_TLS:
        raise fail("imap.tls", f"{tls!r}: use one of {', '.join(IMAP_TLS)}")
    host = section.get("host", "")
    if tls == "none" and host not in LOOPBACK:
        raise fail("imap.tls", "\"none\" would send the password in clear: only for a server "
                               "on loopback; use \"implicit\" or \"starttls\"")
    port = section.get("port", 993 if tls == "implicit" else 143)
    if not 1 <= port <= 65535:
        raise fail("imap.port", f"{port} is not a TCP port")
    if mode == "imap":
        # With [oauth2], the login is XOAUTH2 with an access token instead of the password.
        for key in ("host", "username") + (() if oauth2 else ("password",)):
            if not section.get(key):
                raise fail(f"imap.{key}", "missing: [inbound] mode = \"imap\" needs the "
                                          "mailbox's host, username and password (or [oauth2])")
    try:
        poll_every = parse_duration(section.get("poll_every", "60s"), what="imap.poll_every")
    except InvalidInput as exc:
        raise fail("imap.poll_every", str(exc).split(": ", 1)[1]) from None
    return Imap(host=host, port=port, tls=tls, username=section.get("username", ""),
                password=section.get("password", ""), folder=section.get("folder", "INBOX"),
                poll_every=poll_every)


@dataclass(frozen=True)
class Cadence:
    """How often things happen, per severity."""

    update_every: dict[str, timedelta] = field(
        default_factory=lambda: {k: parse_duration(v) for k, v in DEFAULT_UPDATE_EVERY.items()}
    )
    reminder_before: timedelta = timedelta(minutes=10)
    # Per severity: the same list for all unless [cadence] escalate is a table.
    escalate: dict[str, tuple[timedelta, ...]] = field(
        default_factory=lambda: {k: (timedelta(hours=4), timedelta(days=1)) for k in SEVERITIES}
    )
    handover_after: timedelta = timedelta(hours=7)


SUBJECT_STYLES = ("thread", "status")


@dataclass(frozen=True)
class Emails:
    """How communications read: subjects, and how much of the history each one carries."""

    subject_style: str = "thread"  # "status": the state in every subject
    updates_in_full: int = 10
    update_max_chars: int = 20_000


@dataclass(frozen=True)
class Http:
    """The HTTP listener for alert webhooks and one-click unsubscribes (off by default)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 8026
    token: str = ""  # the bearer token alert senders must present
    public_url: str = ""  # how subscribers reach it, for the one-click unsubscribe URL


@dataclass(frozen=True)
class Alerts:
    """How alerts become draft incidents."""

    default_service: str = ""  # for alerts without a `service` label
    remind_after: timedelta = timedelta(minutes=10)


@dataclass(frozen=True)
class StatusPage:
    """Where the static status page is written, and what runs after each write."""

    dir: Path | None = None
    title: str = "Service status"
    after_write: str = ""
    after_write_timeout: float = 120.0


def _extras(data: dict[str, Any], base: Path, fail: Any, get: Any,
            check_keys: Any) -> dict[str, Any]:
    """The [http], [alerts] and [status] sections."""
    http = get(data, "http", dict, {})
    alerts = get(data, "alerts", dict, {})
    status = get(data, "status", dict, {})
    check_keys(http, {"enabled", "host", "port", "token", "public_url"}, "http.")
    check_keys(alerts, {"default_service", "remind_after"}, "alerts.")
    check_keys(status, {"dir", "title", "after_write", "after_write_timeout"}, "status.")
    enabled = get(http, "enabled", bool, False, "http.")
    token = get(http, "token", str, "", "http.")
    if enabled and len(token) < 16:
        raise fail("http.token", "alert senders must present a bearer token: set 16+ random "
                                 "characters (e.g. `python -c 'import secrets; "
                                 "print(secrets.token_hex(24))'`)")
    port = get(http, "port", int, 8026, "http.")
    if not 0 <= port <= 65535:
        raise fail("http.port", f"{port} is not a TCP port")
    try:
        remind = parse_duration(str(alerts.get("remind_after", "10m")))
    except InvalidInput as exc:
        raise fail("alerts.remind_after", str(exc)) from None
    folder = get(status, "dir", str, "", "status.")
    return {
        "http": Http(enabled=enabled, host=get(http, "host", str, "127.0.0.1", "http."),
                     port=port, token=token,
                     public_url=get(http, "public_url", str, "", "http.").rstrip("/")),
        "alerts": Alerts(default_service=get(alerts, "default_service", str, "", "alerts."),
                         remind_after=remind),
        "status": StatusPage(
            dir=(base / folder).resolve() if folder else None,
            title=get(status, "title", str, "Service status", "status."),
            after_write=get(status, "after_write", str, "", "status."),
            after_write_timeout=float(get(status, "after_write_timeout", (int, float), 120,
                                          "status."))),
    }


@dataclass(frozen=True)
class Ha:
    """[ha]: several daemons on one PostgreSQL database."""

    # A dead or cut-off scheduler holder is replaced within this time; heartbeats go at a
    # third of it, and an instance silent for longer is shown as gone.
    takeover: timedelta = timedelta(seconds=30)


def _ha(section: Any, fail: Callable[[str, str], ConfigError]) -> Ha:
    """[ha], checked."""
    if not isinstance(section, dict):
        raise fail("ha", "must be a table ([ha])")
    unknown = set(section) - {"takeover"}
    if unknown:
        raise fail(f"ha.{sorted(unknown)[0]}", "unknown key; known: takeover")
    try:
        takeover = parse_duration(str(section.get("takeover", "30s")))
    except InvalidInput as exc:
        raise fail("ha.takeover", str(exc).split(": ", 1)[-1]) from None
    if not timedelta(seconds=3) <= takeover <= timedelta(minutes=10):
        raise fail("ha.takeover", f"{section.get('takeover')} is out of range: 3s to 10m")
    return Ha(takeover=takeover)


@dataclass(frozen=True)
class Config:
    """Everything mailflow needs to know, resolved to absolute paths."""

    path: Path | None
    database: Path | str  # a SQLite file, or a postgresql:// URL (str)
    contacts: Path
    templates: Path | None
    maildir: Path
    sender: str = "Incident Desk <incidents@example.org>"
    reply_to: str = "incidents@example.org"
    secret: str = ""
    previous_secret: str = ""
    previous_secret_until: datetime | None = None
    outbound: Outbound = field(default_factory=Outbound)
    inbound: Inbound = field(default_factory=Inbound)
    cadence: Cadence = field(default_factory=Cadence)
    imap: Imap = field(default_factory=Imap)
    allow_local_domains: bool = False  # addresses at dotless domains (ana@localhost): local tests
    http: Http = field(default_factory=Http)
    alerts: Alerts = field(default_factory=Alerts)
    status: StatusPage = field(default_factory=StatusPage)
    emails: Emails = field(default_factory=Emails)
    ha: Ha = field(default_factory=Ha)
    oauth2: OAuth2 | None = None  # [oauth2]: XOAUTH2 for the relay and the mailbox

    def state_dir(self) -> Path:
        """Where files of this host's own live (the OAuth2 token): beside the SQLite file, or
        with a PostgreSQL URL beside the Maildir (/var/lib/mailflow in a system install: the
        unit's one writable folder, where /etc/mailflow is read-only)."""
        if isinstance(self.database, Path):
            return self.database.parent
        return self.maildir.parent

    def secrets(self, now: datetime) -> tuple[str, ...]:
        """Secrets whose tokens are accepted at `now`: the current one, and during the
        grace period after a rotation, the previous one."""
        if self.previous_secret and self.previous_secret_until and now < self.previous_secret_until:
            return (self.secret, self.previous_secret)
        return (self.secret,)

    @property
    def reply_local(self) -> str:
        """Local part of the reply address (before any +token)."""
        return self.reply_to.rsplit("@", 1)[0]

    @property
    def reply_domain(self) -> str:
        """Domain of the reply address; also used for Message-IDs."""
        return self.reply_to.rsplit("@", 1)[1]


_TOP = {"database", "contacts", "templates", "from", "reply_to", "secret", "maildir",
        "previous_secret", "previous_secret_until",
        "outbound", "inbound", "cadence", "allow_local_domains", "imap", "http", "alerts",
        "status", "emails", "ha",
        "oauth2"}
_OUT = {"host", "port", "starttls", "username", "password", "concurrency", "timeout", "retry_for",
        "cafile", "smtputf8", "max_message_size"}
_IN = {"mode", "host", "port", "max_size", "tls_cert", "tls_key", "require_tls", "username",
       "password", "process_timeout", "max_connections", "max_pending_bytes", "idle_timeout",
       "max_parts", "max_recipients", "receipts", "send_now_every"}
_CAD = {"update_every", "reminder_before", "escalate", "handover_after"}
_EMAILS = {"subject_style", "updates_in_full", "update_max_chars"}


def _inbound_limits(inb: dict[str, Any], max_size: int,
                    fail: Callable[[str, str], ConfigError]) -> dict[str, Any]:
    """[inbound]'s abuse limits, each checked against a sensible range."""
    defaults = Inbound()
    ranges: dict[str, tuple[float, float]] = {
        "process_timeout": (0.1, 600), "max_connections": (1, 100_000),
        "max_pending_bytes": (max_size, 2**40), "idle_timeout": (1, 3600),
        "max_parts": (10, 1_000_000), "max_recipients": (1, 1000)}
    limits: dict[str, Any] = {}
    for key, (low, high) in ranges.items():
        default = getattr(defaults, key)
        value = inb.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                (isinstance(default, int) and not isinstance(value, int)):
            kind = "a whole number" if isinstance(default, int) else "a number of seconds"
            raise fail(f"inbound.{key}", f"must be {kind}, got {value!r}")
        if not low <= value <= high:
            raise fail(f"inbound.{key}", f"{value} is out of range: use {low:g} to {high:g}"
                       + (" (at least inbound.max_size)" if key == "max_pending_bytes" else ""))
        limits[key] = float(value) if isinstance(default, float) else value
    return limits


RECEIPTS = ("commands", "always")


def _reply_settings(inb: dict[str, Any], fail: Callable[[str, str], ConfigError]
                    ) -> dict[str, Any]:
    """[inbound] receipts and send_now_every."""
    receipts = inb.get("receipts", "commands")
    if receipts not in RECEIPTS:
        raise fail("inbound.receipts", f"{receipts!r}: use \"commands\" (after replies with "
                                       "commands or refusals) or \"always\"")
    every = inb.get("send_now_every", "5m")
    if not isinstance(every, str):
        raise fail("inbound.send_now_every", f"must be a duration such as \"5m\", got {every!r}")
    try:
        send_now_every = parse_duration(every, what="send_now_every")
    except InvalidInput as exc:
        raise fail("inbound.send_now_every", str(exc)) from None
    return {"receipts": receipts, "send_now_every": send_now_every}


def _emails_section(section: Any, fail: Any, get: Any) -> Emails:
    """The [emails] section: subject style and how much history an email carries."""
    if not isinstance(section, dict):
        raise fail("emails", "must be a table ([emails])")
    unknown = set(section) - _EMAILS
    if unknown:
        raise fail(f"emails.{sorted(unknown)[0]}",
                   f"unknown key; known: {', '.join(sorted(_EMAILS))}")
    style = get(section, "subject_style", str, "thread", "emails.")
    if style not in SUBJECT_STYLES:
        raise fail("emails.subject_style", f"{style!r} is not one of {', '.join(SUBJECT_STYLES)}")
    in_full = get(section, "updates_in_full", int, 10, "emails.")
    max_chars = get(section, "update_max_chars", int, 20_000, "emails.")
    if in_full < 1 or max_chars < 200:
        raise fail("emails.updates_in_full" if in_full < 1 else "emails.update_max_chars",
                   "too small: at least 1 update and 200 characters")
    return Emails(subject_style=style, updates_in_full=in_full, update_max_chars=max_chars)


def _database(value: str, base: Path) -> Path | str:
    """A postgresql:// URL as given (libpq reads it), else the SQLite file's absolute path."""
    if value.startswith(("postgresql://", "postgres://")):
        return value
    return (base / value).resolve()


def find_config(explicit: str | os.PathLike[str] | None) -> Path:
    """`--config FILE`, else `$MAILFLOW_CONFIG`, else ./mailflow.toml."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("MAILFLOW_CONFIG")
    return Path(env) if env else Path("mailflow.toml")


def load_config(path: Path) -> Config:
    """Read and validate a config file; a missing file is an error naming `mailflow init`."""
    if not path.exists():
        raise ConfigError(f"{path}: no such config file; run `mailflow init` here, "
                          "or pass --config / set MAILFLOW_CONFIG")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return config_from_dict(data, path)


def config_from_dict(data: dict[str, Any], path: Path | None = None) -> Config:
    """Validate a parsed TOML document into a Config; relative paths resolve beside `path`."""
    where = str(path) if path else "config"
    base = path.resolve().parent if path else Path.cwd()

    def fail(key: str, why: str) -> ConfigError:
        return ConfigError(f"{where}: {key}: {why}")

    def check_keys(section: dict[str, Any], allowed: set[str], prefix: str) -> None:
        for key in section:
            if key not in allowed:
                raise fail(prefix + key,
                           f"unknown key; expected one of {', '.join(sorted(allowed))}")

    def get(section: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any,
            prefix: str = "") -> Any:
        value = section.get(key, default)
        if kind is int and isinstance(value, bool):
            raise fail(prefix + key, "must be a number")
        if not isinstance(value, kind):
            raise fail(prefix + key, f"must be {getattr(kind, '__name__', kind)}, got {value!r}")
        return value

    def duration(value: Any, key: str) -> timedelta:
        try:
            return parse_duration(str(value), what=key)
        except InvalidInput as exc:
            raise fail(key, str(exc).split(": ", 1)[1]) from None

    def address(value: str, key: str) -> str:
        rules = Rules(allow_local_domains=data.get("allow_local_domains") is True)
        try:
            check(value, "", rules)
        except InvalidInput as exc:
            raise fail(key, str(exc).strip()) from None
        return value

    check_keys(data, _TOP, "")
    out = get(data, "outbound", dict, {})
    inb = get(data, "inbound", dict, {})
    cad = get(data, "cadence", dict, {})
    check_keys(out, _OUT, "outbound.")
    check_keys(inb, _IN, "inbound.")
    check_keys(cad, _CAD, "cadence.")

    def resolve(key: str, default: str) -> Path:
        return (base / get(data, key, str, default)).resolve()

    sender = address(get(data, "from", str, "Incident Desk <incidents@example.org>"), "from")
    reply_to = address(get(data, "reply_to", str, "incidents@example.org"), "reply_to")
    reply_to = parseaddr(reply_to)[1]
    if "+" in reply_to.split("@")[0]:
        raise fail("reply_to", "the base address must not contain '+'; mailflow adds +TOKEN")

    update_every = dict(Cadence().update_every)
    raw_every = get(cad, "update_every", dict, {}, "cadence.")
    for sev, value in raw_every.items():
        if sev not in SEVERITIES:
            raise fail(f"cadence.update_every.{sev}",
                       f"unknown severity; use {', '.join(SEVERITIES)}")
        update_every[sev] = duration(value, f"cadence.update_every.{sev}")
    raw_escalate = get(cad, "escalate", (list, dict), ["4h", "1d"], "cadence.")
    escalate: dict[str, tuple[timedelta, ...]] = {}
    for sev in SEVERITIES:
        values = raw_escalate.get(sev, ["4h", "1d"]) if isinstance(raw_escalate, dict) \
            else raw_escalate
        if not isinstance(values, list):
            raise fail(f"cadence.escalate.{sev}",
                       "must be a list of durations, e.g. [\"4h\", \"1d\"]")
        escalate[sev] = tuple(sorted(duration(v, f"cadence.escalate.{sev}") for v in values))
    if isinstance(raw_escalate, dict):
        for sev in raw_escalate:
            if sev not in SEVERITIES:
                raise fail(f"cadence.escalate.{sev}",
                           f"unknown severity; use {', '.join(SEVERITIES)}")
    port_out = get(out, "port", int, 587, "outbound.")
    port_in = get(inb, "port", int, 8025, "inbound.")
    for key, port in (("outbound.port", port_out), ("inbound.port", port_in)):
        if not 0 <= port <= 65535:
            raise fail(key, f"{port} is not a TCP port")
    concurrency = get(out, "concurrency", int, 2, "outbound.")
    if not 1 <= concurrency <= 32:
        raise fail("outbound.concurrency", "must be between 1 and 32")
    max_size = get(inb, "max_size", int, 10 * 1024 * 1024, "inbound.")
    if max_size < 1024:
        raise fail("inbound.max_size", "must be at least 1024 bytes")
    limits = _inbound_limits(inb, max_size, fail)
    limits.update(_reply_settings(inb, fail))
    mode = get(inb, "mode", str, "smtp", "inbound.")
    if mode not in ("smtp", "imap"):
        raise fail("inbound.mode", f"{mode!r}: use \"smtp\" (the built-in server) or \"imap\"")
    imap = _imap(get(data, "imap", dict, {}), mode, fail, oauth2="oauth2" in data)
    oauth = parse_oauth2(get(data, "oauth2", dict, {}), fail)
    templates = data.get("templates")
    # The secret is all that stands between a stranger and a valid reply token.
    if "secret" not in data:
        raise fail("secret", "missing; `mailflow init` writes a random one, or set 16+ "
                             "random characters (e.g. `python -c 'import secrets; "
                             "print(secrets.token_hex(24))'`)")
    secret = get(data, "secret", str, "")
    previous_secret = get(data, "previous_secret", str, "")
    for key, value in (("secret", secret), ("previous_secret", previous_secret)):
        if value and (len(value) < 16 or value == "change-me"):
            raise fail(key, "too short to sign tokens safely: use 16+ random characters")
    if not secret:
        raise fail("secret", "empty; use 16+ random characters")
    if templates is not None and not (base / str(templates)).is_dir():
        raise fail("templates", f"{(base / str(templates)).resolve()} is not a folder")
    out_host = get(out, "host", str, "", "outbound.")
    if out.get("username") and not out.get("starttls", True) and out.get("port", 587) != 465 \
            and out_host not in ("127.0.0.1", "::1", "localhost"):
        raise fail("outbound.username", "the password would cross the network in clear: "
                                        "set starttls = true (or port 465)")
    tls: dict[str, Path | None] = {}
    for key in ("tls_cert", "tls_key"):
        value = get(inb, key, str, "", "inbound.")
        path = (base / value).resolve() if value else None
        if path is not None and not path.is_file():
            raise fail(f"inbound.{key}", f"{path} is not a readable file")
        tls[key] = path
    tls_cert, tls_key = tls["tls_cert"], tls["tls_key"]
    cafile_raw = get(out, "cafile", str, "", "outbound.")
    cafile = (base / cafile_raw).resolve() if cafile_raw else None
    if cafile is not None and not cafile.is_file():
        raise fail("outbound.cafile", f"{cafile} is not a readable file")
    if (tls_cert is None) != (tls_key is None):
        raise fail("inbound.tls_cert", "set both tls_cert and tls_key, or neither")
    if get(inb, "require_tls", bool, False, "inbound.") and tls_cert is None:
        raise fail("inbound.require_tls", "needs tls_cert and tls_key")
    if bool(inb.get("username")) != bool(inb.get("password")):
        raise fail("inbound.username", "set both username and password, or neither")
    if inb.get("username") and tls_cert is None and \
            inb.get("host", "127.0.0.1") not in ("127.0.0.1", "::1", "localhost"):
        raise fail("inbound.username", "a password would cross the network in clear: "
                                       "set tls_cert and tls_key too")
    until_raw = get(data, "previous_secret_until", (str, datetime), "")
    try:
        until = parse_time(until_raw) if isinstance(until_raw, str) and until_raw else \
            (until_raw if isinstance(until_raw, datetime) else None)
    except InvalidInput:
        raise fail("previous_secret_until", f"{until_raw!r} is not an ISO 8601 time") from None
    if isinstance(until, datetime) and until.tzinfo is None:
        until = parse_time(until.isoformat())
    reminder_before = duration(cad.get("reminder_before", "10m"), "cadence.reminder_before")
    max_message_size = get(out, "max_message_size", int, 1024 * 1024, "outbound.")
    if max_message_size < 64 * 1024:
        raise fail("outbound.max_message_size", f"{max_message_size} is too small: an email "
                                                "needs at least 65536 bytes")
    emails = _emails_section(data.get("emails", {}), fail, get)
    shortest = min(update_every.values())
    if reminder_before >= shortest:
        raise fail("cadence.reminder_before", f"must be shorter than the shortest update_every "
                                              f"({shortest}), or no reminder would ever go out")
    return Config(
        oauth2=oauth,
        path=path.resolve() if path else None,
        database=_database(get(data, "database", str, "mailflow.db"), base),
        contacts=resolve("contacts", "contacts.yaml"),
        templates=resolve("templates", ".") if templates is not None else None,
        maildir=resolve("maildir", "mail"),
        sender=sender,
        reply_to=reply_to,
        secret=secret,
        previous_secret=previous_secret,
        previous_secret_until=until,
        outbound=Outbound(
            host=get(out, "host", str, "", "outbound."),
            port=port_out,
            starttls=get(out, "starttls", bool, True, "outbound."),
            username=get(out, "username", str, "", "outbound."),
            password=get(out, "password", str, "", "outbound."),
            concurrency=concurrency,
            timeout=float(get(out, "timeout", (int, float), 30, "outbound.")),
            retry_for=duration(out.get("retry_for", "1d"), "outbound.retry_for"),
            cafile=cafile,
            smtputf8=get(out, "smtputf8", bool, False, "outbound."),
            max_message_size=max_message_size,
        ),
        inbound=Inbound(
            mode=mode,
            host=get(inb, "host", str, "127.0.0.1", "inbound."),
            port=port_in,
            max_size=max_size,
            tls_cert=tls_cert,
            tls_key=tls_key,
            require_tls=get(inb, "require_tls", bool, False, "inbound."),
            username=get(inb, "username", str, "", "inbound."),
            password=get(inb, "password", str, "", "inbound."),
            **limits,
        ),
        cadence=Cadence(
            update_every=update_every,
            reminder_before=reminder_before,
            escalate=escalate,
            handover_after=duration(cad.get("handover_after", "7h"), "cadence.handover_after"),
        ),
        allow_local_domains=get(data, "allow_local_domains", bool, False),
        imap=imap,
        **_extras(data, base, fail, get, check_keys),
        emails=emails,
        ha=_ha(data.get("ha", {}), fail),
    )
