"""Jinja2 + premailer → one personalised multipart/alternative email per recipient.

The HTML of a communication is rendered and CSS-inlined once (premailer costs ~16 ms);
per-recipient values (greeting, why they receive it, local times) are left as markers
in that pass and filled in per recipient, escaped, by one regex substitution.
"""

from __future__ import annotations

import binascii
import logging
import re
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, formataddr, make_msgid
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from markupsafe import Markup, escape

if TYPE_CHECKING:  # Jinja2 is imported by the Renderer: `mailflow list` never loads it
    import jinja2

from .addresses import normalise as bare_address  # noqa: F401 (imported from here)
from .clock import as_utc, format_duration
from .errors import TemplateError

log = logging.getLogger(__name__)

KINDS = ("start", "update", "solved", "reminder", "escalation", "handover", "notice")


def builtin_templates() -> Path:
    """The folder of templates shipped with mailflow (the repo's top-level `templates/`)."""
    here = Path(__file__).resolve().parent
    source = here.parent / "templates"
    if (source / "base.html").is_file():  # a source checkout or an editable install
        return source
    return here / "templates"  # a wheel: installed as the package data of mailflow.templates


def one_line(value: str) -> str:
    """Collapse CR/LF and runs of whitespace: nothing may break out of a header."""
    return " ".join(str(value).split())


@dataclass(frozen=True)
class Personal:
    """What makes one recipient's copy theirs."""

    email: str
    name: str = ""
    reason: str = ""
    timezone: str | None = None

    @property
    def greeting(self) -> str:
        """"Hello Ana," or "Hello," when we do not know their name."""
        first = self.name.split()[0] if self.name.strip() else ""
        return f"Hello {first}," if first else "Hello,"

    def local(self, when: datetime | None) -> str:
        """" (11:00 Europe/Zurich)" for a contact with a time zone, else ""."""
        if when is None or not self.timezone:
            return ""
        try:
            zone = ZoneInfo(self.timezone)
        except (KeyError, ValueError):
            return ""
        local = as_utc(when).astimezone(zone)
        # In the hour a DST change repeats, 02:30 happens twice: the offset says which.
        other = local.replace(fold=1 - local.fold)
        if other.utcoffset() != local.utcoffset():
            offset = local.strftime("%z")
            return f" ({local:%H:%M} UTC{offset[:3]}:{offset[3:]} {self.timezone})"
        return f" ({local:%H:%M} {self.timezone})"


class _Markers:
    """Stands in for `recipient` in the shared HTML pass; every value becomes a marker."""

    def __init__(self) -> None:
        self.nonce = secrets.token_hex(6)  # per render: text from a reply cannot forge one
        self.times: list[datetime | None] = []

    def _mark(self, key: str) -> Markup:
        return Markup(f"%%MF{self.nonce}:{key}%%")

    @property
    def greeting(self) -> Markup:
        return self._mark("greeting")

    @property
    def name(self) -> Markup:
        return self._mark("name")

    @property
    def email(self) -> Markup:
        return self._mark("email")

    @property
    def reason(self) -> Markup:
        return self._mark("reason")

    def local(self, when: datetime | None) -> Markup:
        self.times.append(when)
        return self._mark(f"local{len(self.times) - 1}")

    def values(self, person: Personal) -> dict[str, str]:
        """What each marker of this render stands for, for one recipient."""
        values = {
            "greeting": person.greeting, "name": person.name,
            "email": person.email, "reason": person.reason,
        }
        for i, when in enumerate(self.times):
            values[f"local{i}"] = person.local(when)
        return values

    def fill(self, rendered: str, values: dict[str, str], html: bool) -> str:
        """Replace the markers in one render's output (HTML-escaped for the HTML part)."""
        if html:
            values = {k: str(escape(v)) for k, v in values.items()}
        return self._pattern.sub(lambda m: values.get(m.group(1), ""), rendered)

    @property
    def _pattern(self) -> re.Pattern[str]:
        return re.compile(rf"%%MF{self.nonce}:(\w+)%%")


def _duration(delta: timedelta | None) -> str:
    """A duration for an email ("—" never: no duration reads as 0 min)."""
    return format_duration(delta or timedelta(0))


# Bidi overrides and isolates (text that reads backwards: "txt.exe" as "exe.txt") and
# zero-width characters (hidden words) are removed from posted text when it is rendered.
_INVISIBLE = re.compile("[\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")


def clean_text(text: str) -> str:
    """Posted text without bidi overrides and zero-width characters."""
    return _INVISIBLE.sub("", text)


WIDTH = 78  # RFC 5322's line length: the text part's lines are at most this long
_LIST_ITEM = re.compile(r"(?:[-*•+]|\d{1,3}[.)]|[a-z][.)])\s")


def reflow_paragraphs(text: str) -> str:
    """Join the lines a mail client hard-wrapped (at 72 or so) back into paragraphs, so
    they wrap at the reader's width (a phone's is 40): a line of 50-80 characters followed
    by one that continues the paragraph. Lists, quotes, indented lines (code, stack
    traces) and lines that all start with a digit (logs) keep their breaks."""
    out: list[str] = []
    previous = ""  # the previous line as written, before any joining
    for line in text.split("\n"):
        if out and _continues(previous, line):
            out[-1] = out[-1].rstrip() + " " + line.strip()
        else:
            out.append(line)
        previous = line
    return "\n".join(out)


def _continues(previous: str, line: str) -> bool:
    """Whether `line` is the rest of `previous`'s paragraph, wrapped by a client."""
    if not line.strip() or not previous.strip() or line[0] in " \t>" or previous[0] in " \t>":
        return False
    if not 50 <= len(previous.rstrip()) <= 80:
        return False  # a short line was ended on purpose; a long one was not wrapped
    if _LIST_ITEM.match(line) or (line[0].isdigit() and previous[0].isdigit()):
        return False
    return True


def flowed(text: str, width: int = WIDTH) -> str:
    """The text as RFC 3676 format=flowed: lines over `width` broken at spaces with a
    trailing space (a soft break a flowed reader joins again at its own width); lines
    starting with a space, ">" or "From " space-stuffed; the signature separator kept."""
    out: list[str] = []
    for line in text.split("\n"):
        if line == "-- ":
            out.append(line)
            continue
        line = line.rstrip(" ")  # a trailing space would mean "joins the next line"
        pieces = []
        while len(line) > width:
            cut = line.rfind(" ", 1, width)  # the piece keeps its space: at most `width`
            if cut <= 0 or not line[:cut].strip():
                cut = line.find(" ", width)  # a word longer than a line is not broken
                if cut < 0:
                    break
            pieces.append(line[:cut + 1])
            line = line[cut + 1:]
        pieces.append(line)
        out += [" " + p if p.startswith((" ", ">", "From ")) else p for p in pieces]
    return "\n".join(out)


def _hm(value: datetime | None) -> str:
    return "" if value is None else f"{as_utc(value):%H:%M}"


def _day(value: datetime | None) -> str:
    return "" if value is None else f"{as_utc(value):%Y-%m-%d}"


def _utc(value: datetime | None) -> str:
    return "" if value is None else f"{as_utc(value):%Y-%m-%d %H:%M} UTC"


@dataclass
class Outgoing:
    """One personalised email, ready for the outbox."""

    recipient: Personal
    message_id: str
    raw: bytes


@dataclass
class Envelope:
    """The headers shared by every copy of one communication."""

    sender: str
    subject: str
    reply_to: str
    domain: str
    date: datetime
    threads: dict[str, str] = field(default_factory=dict)  # email -> first Message-ID they got
    extra_headers: Sequence[tuple[str, str]] = ()


class Renderer:
    """Loads templates (operator overrides first, then built-ins) and renders communications."""

    def __init__(self, override_dir: Path | None = None) -> None:
        import jinja2

        self.override_dir = override_dir
        loaders: list[jinja2.BaseLoader] = []
        if override_dir is not None:
            loaders.append(jinja2.FileSystemLoader(str(override_dir)))
        loaders.append(jinja2.FileSystemLoader(str(builtin_templates())))
        self.env = jinja2.Environment(
            loader=jinja2.ChoiceLoader(loaders),
            autoescape=jinja2.select_autoescape(["html"], default_for_string=False),
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )
        self.env.filters.update(hm=_hm, day=_day, utc=_utc, duration=_duration, clean=clean_text)
        self._css_cache: dict[str, str] = {}

    def check(self) -> None:
        """Load every template now, so a broken override fails at startup or reload.

        StrictUndefined only fails when a template is rendered, which for an escalation
        may be hours away: a variable no built-in template knows is refused here.
        """
        import jinja2
        from jinja2 import meta

        for kind in KINDS:
            self._template(f"{kind}.html")
            self._template(f"{kind}.txt")
        self._template("postmortem.md")
        if self.override_dir is None:
            return
        known = set(self.env.globals) | {"reply_address", "kind", "subject"}
        for path in builtin_templates().glob("*"):
            if path.suffix in (".html", ".txt", ".md"):
                known |= meta.find_undeclared_variables(
                    self.env.parse(path.read_text(encoding="utf-8")))
        for path in sorted(self.override_dir.glob("*")):
            if path.suffix not in (".html", ".txt", ".md") or not path.is_file():
                continue
            try:
                unknown = meta.find_undeclared_variables(
                    self.env.parse(path.read_text(encoding="utf-8"))) - known
            except jinja2.TemplateSyntaxError as exc:
                raise TemplateError(f"{path}:{exc.lineno}: {exc.message}") from None
            if unknown:
                raise TemplateError(f"{path}: unknown variable(s) {', '.join(sorted(unknown))}; "
                                    "see the built-in templates for what is available")

    def _template(self, name: str) -> jinja2.Template:
        import jinja2

        try:
            return self.env.get_template(name)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"{exc.filename or name}:{exc.lineno}: {exc.message}") from None
        except jinja2.TemplateNotFound:
            raise TemplateError(f"template {name!r} not found in the templates folder") from None

    def _render(self, name: str, context: dict[str, Any]) -> str:
        import jinja2

        template = self._template(name)
        try:
            return template.render(context)
        except jinja2.UndefinedError as exc:
            raise TemplateError(f"{template.filename}: {exc.message}") from None
        except jinja2.TemplateError as exc:
            raise TemplateError(f"{template.filename}: {exc}") from None

    def html(self, kind: str, context: dict[str, Any]) -> tuple[str, _Markers]:
        """Render and CSS-inline the HTML of a communication once, with recipient markers."""
        markers = _Markers()
        html = self._render(f"{kind}.html", {**context, "recipient": markers})
        return inline_css(html), markers

    def text(self, kind: str, context: dict[str, Any], person: Personal) -> str:
        """Render the plain-text part for one recipient (a Jinja render costs ~15 µs)."""
        return flowed(self._render(f"{kind}.txt", {**context, "recipient": person}))

    def preview(self, kind: str, context: dict[str, Any], person: Personal) -> str:
        """The final HTML one recipient would get (for `mailflow preview`)."""
        html, markers = self.html(kind, context)
        return markers.fill(html, markers.values(person), html=True)

    def personalise(
        self, kind: str, context: dict[str, Any], people: Iterable[Personal], envelope: Envelope
    ) -> list[Outgoing]:
        """One email per recipient; templates, premailer and most encoding run once for all."""
        html, markers = self.html(kind, context)
        # The text part too is rendered once, with the same markers (the times are shared).
        text = self._render(f"{kind}.txt", {**context, "recipient": markers})
        skeleton = Skeleton(envelope)
        pattern = markers._pattern
        text_part, html_part = _Part(text, pattern, flowed), _Part(html, pattern)
        out = []
        for person in people:
            values = markers.values(person)
            escaped = {k: str(escape(v)) for k, v in values.items()}
            message_id = make_msgid(domain=envelope.domain)
            raw = skeleton.build(person, message_id, text_part.encode(values),
                                 html_part.encode(escaped))
            out.append(Outgoing(person, message_id, raw))
        return out


class _Part:
    """One body part, quoted-printable encoded once except its lines with recipient markers.

    Those are few (4 of the ~60 lines of an update's HTML) and are filled and encoded per
    recipient. Quoted-printable works line by line, so encoding each line with its newline
    apart gives the very bytes of encoding the whole text: this only saves the repetition.
    """

    def __init__(self, rendered: str, pattern: re.Pattern[str],
                 wrap: Callable[[str], str] | None = None) -> None:
        self.pattern = pattern
        self.wrap = wrap  # per line, after the markers are filled (format=flowed)
        self.encoded: list[bytes] = []  # runs of shared lines; b"" where a marked line goes
        self.marked: list[tuple[int, str]] = []  # (position in `encoded`, line)
        lines = rendered.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        shared: list[str] = []
        for i, line in enumerate(lines):
            if i < len(lines) - 1:
                line += "\n"
            if pattern.search(line) is None:
                shared.append(wrap(line) if wrap is not None else line)
                continue
            if shared:
                self.encoded.append(_qp("".join(shared)))
                shared = []
            self.marked.append((len(self.encoded), line))
            self.encoded.append(b"")
        if shared:
            self.encoded.append(_qp("".join(shared)))

    def encode(self, values: dict[str, str]) -> bytes:
        """The part for one recipient: markers replaced by `values`, encoded, CRLF line ends."""
        def fill(m: re.Match[str]) -> str:
            return values.get(m.group(1), "")

        out = self.encoded.copy()
        for position, line in self.marked:
            filled = self.pattern.sub(fill, line)
            out[position] = _qp(self.wrap(filled) if self.wrap is not None else filled)
        return b"".join(out)


def inline_css(html: str) -> str:
    """Move <style> rules into style attributes (mail clients drop <style> blocks)."""
    import premailer  # imported late: cssutils is slow to import and chatty

    logging.getLogger("CSSUTILS").setLevel(logging.CRITICAL)
    return premailer.Premailer(
        html,
        remove_classes=False,
        disable_validation=True,
        cssutils_logging_level=logging.CRITICAL,
        allow_network=False,
        strip_important=False,
    ).transform()


class Skeleton:
    """The headers and MIME frame shared by every copy of one communication, made once.

    The email package costs ~1.6 ms to build and serialise one message (header parsing and
    folding); for a fan-out to 1,000 people that is more than the SMTP transactions. Shared
    headers are folded by the email package once; per recipient only To, Message-ID and the
    threading headers are added around the two bodies (encoded by `_Part`).
    """

    def __init__(self, envelope: Envelope) -> None:
        head = EmailMessage(policy=SMTP)
        head["From"] = envelope.sender
        head["Subject"] = one_line(envelope.subject)
        head["Date"] = format_datetime(as_utc(envelope.date))
        head["Reply-To"] = envelope.reply_to
        head["Auto-Submitted"] = "auto-generated"  # RFC 3834: out-of-office robots must not answer
        head["X-Auto-Response-Suppress"] = "OOF, AutoReply"  # the same, for Exchange
        for key, value in envelope.extra_headers:
            head[key] = one_line(value)
        head["MIME-Version"] = "1.0"
        self.shared = head.as_bytes().rstrip(b"\r\n") + b"\r\n"
        # "=" is always encoded in quoted-printable, so no body line can look like this.
        self.boundary = f"===============mf{secrets.token_hex(10)}==".encode()
        self.threads = envelope.threads

    def build(self, person: Personal, message_id: str, text: bytes, html: bytes) -> bytes:
        """One recipient's message, ready for SMTP, from its two quoted-printable parts."""
        name = one_line(person.name)[:100]  # a header line stays under SMTP's 998 octets
        to = formataddr((name, person.email), charset="utf-8") if name else person.email
        parts = [self.shared, b"To: ", one_line(to).encode(), b"\r\nMessage-ID: ",
                 one_line(message_id).encode(), b"\r\n"]
        root = self.threads.get(person.email.lower())
        if root:
            ref = one_line(root).encode()
            parts += [b"In-Reply-To: ", ref, b"\r\nReferences: ", ref, b"\r\n"]
        b = self.boundary
        parts += [
            b'Content-Type: multipart/alternative; boundary="', b, b'"\r\n\r\n',
            b"--", b, b'\r\nContent-Type: text/plain; charset="utf-8"; format=flowed\r\n'
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n", text,
            b"\r\n--", b, b'\r\nContent-Type: text/html; charset="utf-8"\r\n'
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n", html,
            b"\r\n--", b, b"--\r\n",
        ]
        return b"".join(parts)


def _qp(text: str) -> bytes:
    """Quoted-printable with CRLF line ends: 7-bit safe through any relay."""
    data = text.replace("\r\n", "\n").replace("\r", "\n").encode("utf-8")
    return binascii.b2a_qp(data, istext=True).replace(b"\n", b"\r\n")
