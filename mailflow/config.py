"""mailflow.toml + environment → one frozen Config. Errors name the file and the key."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.headerregistry import Address
from email.utils import parseaddr
from pathlib import Path
from typing import Any

from .clock import parse_duration, parse_time
from .errors import ConfigError, InvalidInput

SEVERITIES = ("P0", "P1", "P2", "P3")
DEFAULT_UPDATE_EVERY = {"P0": "30m", "P1": "1h", "P2": "4h", "P3": "1d"}

EXAMPLE_TOML = """\
# mailflow configuration. Every key is optional; these are the defaults.
# Paths are relative to this file.
database = "mailflow.db"
contacts = "contacts.yaml"
# templates = "templates"        # a folder of your own overrides of the built-in templates
from = "Incident Desk <incidents@example.org>"
reply_to = "incidents@example.org"   # replies go to incidents+TOKEN@example.org
secret = "{secret}"   # signs reply tokens; keep it private
# To rotate: move the old secret here; its tokens stay valid until the date below.
# previous_secret = "..."
# previous_secret_until = 2026-12-31T00:00:00Z
# maildir = "mail"               # where mail goes while [outbound] has no host

[outbound]
# host = "smtp.example.org"      # unset: emails are written to the Maildir instead
port = 587
starttls = true
# username = "mailflow"
# password = "..."
concurrency = 1                  # parallel SMTP connections
retry_for = "1d"                 # give up on a temporarily failing email after this long
max_message_size = 1048576       # bytes; no email is bigger (older updates are left out)
# cafile = "relay-ca.pem"        # the relay's private CA (default: the system's CAs)

[inbound]
host = "127.0.0.1"               # replies come in here; keep it on loopback behind your MTA
port = 8025
max_size = 10485760              # bytes; bigger replies get 552
# tls_cert = "cert.pem"          # with tls_key: STARTTLS is offered
# tls_key = "key.pem"
# require_tls = false            # true: no mail before STARTTLS
# username = "mta"               # with password: senders must AUTH (over TLS)
# password = "..."

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
    concurrency: int = 1
    timeout: float = 30.0
    retry_for: timedelta = timedelta(days=1)
    cafile: Path | None = None  # a private CA for the relay's certificate; default: the system's
    max_message_size: int = 1024 * 1024  # no email is bigger (the relay's SIZE may lower it)


@dataclass(frozen=True)
class Inbound:
    """The SMTP server that receives replies."""

    host: str = "127.0.0.1"
    port: int = 8025
    max_size: int = 10 * 1024 * 1024
    tls_cert: Path | None = None  # with tls_key: STARTTLS is offered
    tls_key: Path | None = None
    require_tls: bool = False  # refuse mail before STARTTLS
    username: str = ""  # with password: AUTH (over TLS) is required
    password: str = ""


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
class Config:
    """Everything mailflow needs to know, resolved to absolute paths."""

    path: Path | None
    database: Path
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
    emails: Emails = field(default_factory=Emails)

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
        "outbound", "inbound", "cadence", "emails"}
_OUT = {"host", "port", "starttls", "username", "password", "concurrency", "timeout", "retry_for",
        "cafile", "max_message_size"}
_EMAILS = {"subject_style", "updates_in_full", "update_max_chars"}
_IN = {"host", "port", "max_size", "tls_cert", "tls_key", "require_tls", "username", "password"}
_CAD = {"update_every", "reminder_before", "escalate", "handover_after"}


def _emails_section(section: Any, fail: Any, get: Any) -> Emails:
    """The [emails] section: subject style and how much history an email carries."""
    if not isinstance(section, dict):
        raise fail("emails", "must be a table ([emails])")
    unknown = set(section) - _EMAILS
    if unknown:
        raise fail(f"emails.{sorted(unknown)[0]}", f"unknown key; known: {', '.join(sorted(_EMAILS))}")
    style = get(section, "subject_style", str, "thread", "emails.")
    if style not in SUBJECT_STYLES:
        raise fail("emails.subject_style", f"{style!r} is not one of {', '.join(SUBJECT_STYLES)}")
    in_full = get(section, "updates_in_full", int, 10, "emails.")
    max_chars = get(section, "update_max_chars", int, 20_000, "emails.")
    if in_full < 1 or max_chars < 200:
        raise fail("emails.updates_in_full" if in_full < 1 else "emails.update_max_chars",
                   "too small: at least 1 update and 200 characters")
    return Emails(subject_style=style, updates_in_full=in_full, update_max_chars=max_chars)


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
                raise fail(prefix + key, f"unknown key; expected one of {', '.join(sorted(allowed))}")

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
        name, addr = parseaddr(value)
        if "@" not in addr or any(c in value for c in "\r\n"):
            raise fail(key, f"{value!r} is not an email address")
        try:
            Address(addr_spec=addr)
        except (ValueError, IndexError):
            raise fail(key, f"{value!r} is not an email address") from None
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
            raise fail(f"cadence.update_every.{sev}", f"unknown severity; use {', '.join(SEVERITIES)}")
        update_every[sev] = duration(value, f"cadence.update_every.{sev}")
    raw_escalate = get(cad, "escalate", (list, dict), ["4h", "1d"], "cadence.")
    escalate: dict[str, tuple[timedelta, ...]] = {}
    for sev in SEVERITIES:
        values = raw_escalate.get(sev, ["4h", "1d"]) if isinstance(raw_escalate, dict) \
            else raw_escalate
        if not isinstance(values, list):
            raise fail(f"cadence.escalate.{sev}", "must be a list of durations, e.g. [\"4h\", \"1d\"]")
        escalate[sev] = tuple(sorted(duration(v, f"cadence.escalate.{sev}") for v in values))
    if isinstance(raw_escalate, dict):
        for sev in raw_escalate:
            if sev not in SEVERITIES:
                raise fail(f"cadence.escalate.{sev}", f"unknown severity; use {', '.join(SEVERITIES)}")
    port_out = get(out, "port", int, 587, "outbound.")
    port_in = get(inb, "port", int, 8025, "inbound.")
    for key, port in (("outbound.port", port_out), ("inbound.port", port_in)):
        if not 0 <= port <= 65535:
            raise fail(key, f"{port} is not a TCP port")
    concurrency = get(out, "concurrency", int, 1, "outbound.")
    if not 1 <= concurrency <= 32:
        raise fail("outbound.concurrency", "must be between 1 and 32")
    max_size = get(inb, "max_size", int, 10 * 1024 * 1024, "inbound.")
    if max_size < 1024:
        raise fail("inbound.max_size", "must be at least 1024 bytes")
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
    tls = {}
    for key in ("tls_cert", "tls_key"):
        value = get(inb, key, str, "", "inbound.")
        tls[key] = (base / value).resolve() if value else None
        if tls[key] is not None and not tls[key].is_file():
            raise fail(f"inbound.{key}", f"{tls[key]} is not a readable file")
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
        path=path.resolve() if path else None,
        database=resolve("database", "mailflow.db"),
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
            max_message_size=max_message_size,
        ),
        inbound=Inbound(
            host=get(inb, "host", str, "127.0.0.1", "inbound."),
            port=port_in,
            max_size=max_size,
            tls_cert=tls_cert,
            tls_key=tls_key,
            require_tls=get(inb, "require_tls", bool, False, "inbound."),
            username=get(inb, "username", str, "", "inbound."),
            password=get(inb, "password", str, "", "inbound."),
        ),
        cadence=Cadence(
            update_every=update_every,
            reminder_before=reminder_before,
            escalate=escalate,
            handover_after=duration(cad.get("handover_after", "7h"), "cadence.handover_after"),
        ),
        emails=emails,
    )
