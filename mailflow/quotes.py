"""What the sender just wrote: quoted history, reply headers and signatures removed.

Pure text in, text out. The patterns are data (`mailflow.reply_patterns`); this module
compiles them once and walks the lines:

- a reply header (an attribution, an Outlook header block, an "Original Message"
  separator, a forward) starts the earlier message. When "> " lines follow it, the text
  after them is the sender's again (bottom-posting, inline answers); when the history
  simply follows without marks, everything from the header down is history;
- "> " lines are quoted, except the sender's own `>>> http://… <<<`;
- in each stretch of the sender's own text, a signature separator or a "sent from" line
  ends it, and a sign-off with a name, a dash-led name or the sender's own name closing
  it is the signature.

Every regex is bounded and sees at most a few hundred characters of a line, so a hostile
body costs linear time.
"""

from __future__ import annotations

import quopri
import re
import sys
from collections.abc import Iterable
from pathlib import Path

from . import reply_patterns as patterns

__all__ = ["extract_text", "family_table", "fixtures", "tidy"]

MAX_TEXT_CHARS = 100_000  # body text searched for quotes; an update is never this long
_PROBE_CHARS = 200  # a reply header line is short; longer lines cannot be one
_JOIN_LINES = 5  # clients wrap a long attribution over up to five lines
_JOIN_CHARS = 600
_GLUE_WINDOW = 400  # a header glued to the end of a line is found in its last characters
_TAIL_LINES = 7  # a signature is in the last few non-empty lines of a stretch
_TAIL_WINDOW = 200  # the "wrote" verb is at most this far from the end of a header

# --- text hygiene (same rules as the rest of the reply parser) ---

_TEXT_JUNK = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ud800-\udfff\ufeff]")
_SPACES = re.compile(r"[ \t\u00a0\u2007\u202f\u3000]+")
_INVISIBLE = re.compile(r"[\u200b-\u200f\u202a-\u202e\u2060\u2066-\u2069\ufeff]")  # + bidi marks


def _clean_text(text: str) -> str:
    return _TEXT_JUNK.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


def _probe(line: str, limit: int = _PROBE_CHARS) -> str:
    """A line as the rules see it: trimmed, odd spaces normalised, length capped."""
    probe = _SPACES.sub(" ", _INVISIBLE.sub("", line[: limit * 4])).strip()
    # A capped line ends in "…", so it can never end in "wrote:" or an address.
    return probe if len(probe) <= limit else probe[:limit] + "…"


def tidy(lines: Iterable[str]) -> str:
    """Right-trim lines, collapse runs of blank lines (left by removed quotes), trim."""
    out: list[str] = []
    for line in lines:
        line = line.rstrip()
        if not _INVISIBLE.sub("", line).strip():  # a zero-width space alone is a blank line
            line = ""
            if out and out[-1] == "":
                continue
        out.append(line)
    return "\n".join(out).strip("\n")


# --- the tables, compiled once ---


def _alternation(fragments: Iterable[str], escape: bool) -> str:
    unique = sorted(set(fragments), key=len, reverse=True)  # longest first: "Best regards"
    return "|".join(re.escape(f) if escape else f for f in unique)


def _flatten(table: dict[str, tuple[str, ...]]) -> list[str]:
    return [entry for entries in table.values() for entry in entries]


def _first_chars(fragments: Iterable[str]) -> str:
    """A character class of the letters the fragments can start with (a fast pre-check)."""
    firsts = {f.removeprefix(r"\b")[:1] for f in fragments}
    letters = {c for f in firsts for c in (f.lower(), f.upper())}
    return "[" + "".join(re.escape(c) for c in sorted(letters)) + "]"


def _verb_regex(fragments: list[str]) -> re.Pattern[str]:
    # The look-ahead lets the engine skip most positions before trying ~100 alternatives.
    return re.compile(
        f"(?={_first_chars(fragments)})(?:{_alternation(fragments, False)})", re.IGNORECASE
    )


_VERB = _verb_regex(_flatten(patterns.WROTE_VERBS))
_LEAD_ONLY_VERB = _verb_regex(list(patterns.LEAD_ONLY_VERBS))
_LEADS = _alternation(_flatten(patterns.ATTRIBUTION_LEADS), escape=True)
_LEAD = re.compile(rf"^(?:{_LEADS})(?=[\s,])")
_GLUED_LEAD = re.compile(rf"(?:(?<=\s)|(?<=-)|(?<=\.))(?:{_LEADS})\s")
# After the verb: nothing, a colon, or a short tail ending in one ("schrieb Ana <a@x>:").
_TAIL = re.compile(r"^\s?[:：]?\s?$|^(?P<rest>\s?\S.{0,150}?)\s?[:：]$")
_EVIDENCE = re.compile(r"[\d@]")
_TAIL_DETAIL = re.compile(r"[\d@<(]")
_DATE_START = re.compile(rf"^(?:\S+\s)?(?:{patterns.DATE_OR_TIME})")  # "вт, 24 нояб."
_DATE_HEADER = re.compile(
    rf"^(?:\S+\s){{0,4}}?(?:{patterns.DATE_OR_TIME}).{{0,250}}?\s?{patterns.ADDRESS_END}$"
)
_WRAPPERS = re.compile(r"^[-–—*_ ]+|[-–—*_ ]+$")  # Zoho's "---- On … wrote ----"

_LABEL_KINDS: dict[str, set[str]] = {}
for _language in patterns.HEADER_LABELS.values():
    for _kind, _labels in _language.items():
        for _label in _labels:
            _LABEL_KINDS.setdefault(_label.lower(), set()).add(_kind)
_LABEL = re.compile(
    rf"^[*\s]{{0,3}}(?P<label>{_alternation(_LABEL_KINDS, escape=True)})[*\s]{{0,3}}[:：]"
    r"(?P<value>.*)$",
    re.IGNORECASE,
)
_SEPARATOR = re.compile(
    rf"^[\s*_=>#-]{{0,40}}\[?(?:{_alternation(_flatten(patterns.ORIGINAL_MESSAGE), True)}"
    rf"|{_alternation(patterns.REPLY_ABOVE, True)})\]?"
    r"[\s*_=#.!-]{0,40}:?$",
    re.IGNORECASE,
)
# Outlook's line of underscores (or a long rule) is history only above a header block or
# a list footer; elsewhere it is the sender's own layout.
_RULE = re.compile(r"^[_\u2014\u2015\u2500\u2501-]{20,}$")
_LIST_FOOTER = re.compile(
    r"mailing list|listinfo|mailman|unsubscribe|abmelden|désinscri", re.IGNORECASE
)
_FORWARD = re.compile(
    rf"^[\s*_=>-]{{0,40}}(?:{_alternation(_flatten(patterns.FORWARDED), True)})"
    r"[\s*_=-]{0,40}[:：]?$",
    re.IGNORECASE,
)
_SENT_FROM = re.compile(
    rf"^[(<\[]{{0,2}}(?:{_alternation(_flatten(patterns.SENT_FROM), escape=False)})"
    r"(?:\s[^\s,;:]{1,40}|(?<=[\u3000-\u9fff])[^\s,;:]{1,40})(?:\s[^\s,;:]{1,40}){0,5}"
    r"\s?[.!)>\]]{0,3}"
    rf"(?:[.,;]?\s{{1,3}}(?:{_alternation(patterns.SENT_FROM_APOLOGY, escape=False)})\b.{{0,60}})?$"
    # Words are split by the spaces, never by backtracking (a 200-character word would
    # otherwise be tried in every split); a suffix may be glued to the last word (iPhoneから送信).
    r"|^(?:(?:\S{1,40}\s){1,4}|(?:\S{1,40}\s){0,3}\S{1,40}?)"
    rf"(?:{_alternation(_flatten(patterns.SENT_FROM_SUFFIX), False)})"
    r"\.?$",
    re.IGNORECASE,
)
_SIGN_OFF = re.compile(
    rf"^(?:{_alternation(_flatten(patterns.SIGN_OFFS), escape=True)})"
    r"(?P<punct>\s?[,.!…:;–-]{0,3})"
    rf"(?:\s?/\s?(?:{_alternation(_flatten(patterns.SIGN_OFFS), escape=True)})[,.!]?)?"
    r"(?:\s(?P<name>[^\W\d_][\w.'’-]{0,30}(?:\s[^\W\d_][\w.'’-]{0,30}){0,2}))?\s?[.!]?$",
    re.IGNORECASE,
)
_SIGNATURE_SEPARATORS = frozenset(s.strip() for s in patterns.SIGNATURE_SEPARATORS)
_DASH_NAME = re.compile(patterns.DASH_NAME)
_DASH_RULE = re.compile(r"^-{2,}$")
_DELIMITER_LINE = re.compile(r"^[-_=*~#+—–.]{2,}$")
_OWN_ANGLES = re.compile(r"^>+[\s>]*(?:https?://|www\.)\S{1,2000}\s*<+$")  # >>> http://x <<<
_SENTENCE_END = re.compile(r"[.?!:;]$")
_DISCLAIMER = re.compile(f"^(?:{_alternation(patterns.DISCLAIMERS, escape=False)})")
_BANNER = re.compile(f"^(?:{_alternation(patterns.BANNERS, escape=False)})", re.IGNORECASE)
_LIST_ITEM = re.compile(r"^(?:[-*•–]\s|\d{1,2}[.)]\s)")
_OTHER_HEADER = re.compile(
    "^(?:" + "|".join(f"(?:{h})" for h in patterns.OTHER_HEADERS) + ")$", re.IGNORECASE
)
_URL_TAIL = re.compile(r"<(?:https?://|mailto:)[^<>\s]{0,300}>|\[([^\]]{1,80})\]\([^)\s]{1,300}\)")
# "See <http://x" + "> more": a link broken over two lines, not a quote.
_OPEN_LINK = re.compile(r"<(?:https?://|mailto:|www\.)[^<>\s]{0,300}$")
_LINK_PIECE = re.compile(r"://|^[^\s]{1,120}\)$|\s>$")

ATTRIBUTION, BLOCK, SEPARATOR, FORWARD = "attribution", "block", "separator", "forward"


def _is_attribution(probe: str, next_quoted: bool, strict: bool = False) -> bool:
    """An "On <date>, <name> wrote:" line, in any of the tabled languages."""
    if not probe or len(probe) > _JOIN_CHARS:
        return False
    probe = _WRAPPERS.sub("", probe)
    lead = _LEAD.match(probe) is not None
    colon = probe.endswith((":", "："))
    if not colon and not (lead and probe[-1:].isalpha()):
        return False  # "On … wrote" may lose its colon; a bare "… wrote" sentence may not
    # The verb is near the end (a short tail may follow it): only that window is searched,
    # which keeps a body of long lines cheap.
    start = max(0, len(probe) - (_TAIL_WINDOW if colon else 40))
    verb = None
    for verb in _VERB.finditer(probe, start):  # noqa: B007 (keeps the last match)
        pass
    if verb is None and lead:
        for verb in _LEAD_ONLY_VERB.finditer(probe, start):  # noqa: B007 (the last match)
            pass
    if verb is None or verb.start() == 0:
        return False
    tail = _TAIL.match(probe[verb.end() :])
    if tail is None:
        return False
    rest = (tail.group("rest") or "").strip()
    if not lead:
        words = len(rest.split())
        if words > 10 or (words > 4 and not _TAIL_DETAIL.search(rest)):
            return False  # "I wrote to the vendor about it, here is the answer:"
        if ": " in probe[: verb.start()]:
            return False  # "Update at 10:30: I wrote …": a sentence, not a header
    if strict:
        return _EVIDENCE.search(probe) is not None
    return _EVIDENCE.search(probe) is not None or next_quoted


def _is_date_header(probe: str, next_quoted: bool) -> bool:
    """`2014-10-17 11:28 GMT+03:00 Name <addr>:`, `ср, 30 апр. 2025 г. в 15:19, Name <addr>:`."""
    if len(probe) > _JOIN_CHARS or "@" not in probe:
        return False
    probe = _WRAPPERS.sub("", probe)
    if not _DATE_HEADER.match(probe):
        return False
    return probe.endswith((":", "：")) or next_quoted


class _Lines:
    """The body split into lines, with the per-line facts the rules need."""

    def __init__(self, text: str) -> None:
        self.lines = text.split("\n")
        self.count = len(self.lines)
        self.probes = [_probe(line) for line in self.lines]
        self._singles: dict[int, str | None] = {}
        self.quoted = [
            p.startswith(">")
            and not _OWN_ANGLES.match(p)
            and not (k and _OPEN_LINK.search(self.probes[k - 1]))  # "<http://x" + "> text"
            for k, p in enumerate(self.probes)
        ]
        # A long link of the quoted text broken out of its "> " lines is still quoted.
        for k in range(1, self.count - 1):
            if (
                not self.quoted[k]
                and self.quoted[k - 1]
                and self.quoted[k + 1]
                and _LINK_PIECE.search(self.probes[k])
            ):
                self.quoted[k] = True

    def next_filled(self, start: int, within: int | None = None) -> int | None:
        stop = self.count if within is None else min(self.count, start + within)
        for j in range(start, stop):
            if self.probes[j]:
                return j
        return None

    def _next_quoted(self, end: int) -> bool:
        j = self.next_filled(end + 1, 4)
        return j is not None and self.quoted[j]

    def _single(self, i: int) -> str | None:
        """The kind of header line i is on its own, if any (computed once per line)."""
        if i not in self._singles:
            self._singles[i] = self._single_uncached(i)
        return self._singles[i]

    def _single_uncached(self, i: int) -> str | None:
        probe = self.probes[i]
        if _SEPARATOR.match(probe):
            return SEPARATOR
        if _RULE.match(probe):
            j = self.next_filled(i + 1, 3)
            if j is not None and not self.quoted[j]:
                if _LABEL.match(self.probes[j]) or self._single(j):
                    return SEPARATOR
                if any(
                    _LIST_FOOTER.search(self.probes[k]) for k in range(j, min(self.count, j + 4))
                ):
                    return SEPARATOR
            return None
        if _FORWARD.match(probe):
            return FORWARD
        next_quoted = self._next_quoted(i)
        if _is_attribution(probe, next_quoted) or _is_date_header(probe, next_quoted):
            return ATTRIBUTION
        if _OTHER_HEADER.match(probe):
            return ATTRIBUTION
        return None

    def _block_end(self, i: int) -> int | None:
        """Last line of an Outlook-style header block starting at line i, if it is one."""
        m = _LABEL.match(self.probes[i])
        if not m:
            return None
        kinds = set(_LABEL_KINDS.get(m.group("label").lower(), ()))
        value = m.group("value")
        end, labels = i, 1
        for j in range(i + 1, min(self.count, i + _JOIN_LINES + 1)):
            probe = self.probes[j]
            if not probe or self.quoted[j]:
                break
            n = _LABEL.match(probe)
            if n:
                kinds |= _LABEL_KINDS.get(n.group("label").lower(), set())
                end, labels = j, labels + 1
            elif labels == 1 and j > i + 2:
                break  # a wrapped address may follow From:, not a paragraph
        if labels >= 2 and kinds & {"from", "date"}:
            return end
        if "from" in kinds and ("@" in value or "mailto:" in value.lower()):
            return i  # a lone "From: ana@x" line: a header whose block got lost
        return None

    def _joined(self, i: int, first: str, strict: bool) -> int | None:
        """Last line of an attribution wrapped over lines i.. (first = line i's text)."""
        text = first
        for j in range(i + 1, min(self.count, i + _JOIN_LINES)):
            if not self.probes[j] or self.quoted[j]:
                return None
            bare = _WRAPPERS.sub("", self.probes[j])
            starts = _LABEL.match(bare) or _LEAD.match(bare) or _DATE_START.match(bare)
            if starts and (self._single(j) or self._block_end(j) is not None):
                return None  # line j starts a header itself: this line is the sender's
            text = f"{text} {self.probes[j]}"
            if len(text) > _JOIN_CHARS:
                return None
            next_quoted = self._next_quoted(j)
            if _is_attribution(text, next_quoted, strict) or (
                not strict and _is_date_header(text, next_quoted)
            ):
                return j
            if self._single(j):
                return None  # "ana@x> wrote:" alone: the join did not make a header
        return None

    def header(self, i: int) -> tuple[str, int, int] | None:
        """(kind, column where it starts, last line) when unquoted line i starts history."""
        probe = self.probes[i]
        if not probe or self.quoted[i]:
            return None
        bare = _WRAPPERS.sub("", probe)
        starts = _LEAD.match(bare) is not None or _DATE_START.match(bare) is not None
        kind = self._single(i)
        if kind:
            # "All good now On Wed, … wrote:": the sender's words, then the header.
            glued = self._glued(i) if kind == ATTRIBUTION and not starts else None
            return glued or (kind, 0, i)
        end = self._block_end(i)
        if end is not None:
            return BLOCK, 0, end
        if starts or probe.endswith("<"):
            glued = None if starts else self._glued(i)
            if glued:
                return glued
            end = self._joined(i, probe, strict=False)
            if end is not None:
                return ATTRIBUTION, 0, end
        return self._glued(i)

    def _glued(self, i: int) -> tuple[str, int, int] | None:
        """A header glued to the end of the sender's last line: "thanks On Mon, … wrote:"."""
        line = self.lines[i]
        start = max(0, len(line) - _GLUE_WINDOW)
        for tries, m in enumerate(_GLUED_LEAD.finditer(line, start)):
            if tries >= 3:
                break
            col = m.start()
            if not line[:col].strip():
                continue
            rest = _probe(line[col:], _JOIN_CHARS)
            if _is_attribution(rest, False, strict=True):
                return ATTRIBUTION, col, i
            end = self._joined(i, rest, strict=True)
            if end is not None:
                return ATTRIBUTION, col, end
        return None


# --- signatures ---


def _capitalised(words: list[str]) -> bool:
    """Every word starts with a capital (or is in a script without case)."""
    return all(w[0].isupper() or w[0].lower() == w[0].upper() for w in words if w)


def _name_ish(probe: str) -> bool:
    """A line that can be part of a signature block: a name, a title, a phone, a company."""
    if not probe or probe.startswith(">") or len(probe) > 70 or _LIST_ITEM.match(probe):
        return False
    words = probe.split()
    if len(words) > 7 or probe.endswith(("?", ":")):
        return False
    return not (len(words) > 3 and _SENTENCE_END.search(probe) and not probe.endswith(".com"))


def _sender_names(sender_name: str) -> tuple[str, str] | None:
    """(first, last) of a display name: "Smith, Jim" and "Jim Smith, MD" -> ("jim", "smith")."""
    name = re.sub(r"[\"'()]", " ", sender_name or "").strip()
    if "," in name:
        before, _, after = name.partition(",")
        if len(before.split()) == 1 and after.strip():  # "Smith, Jim"
            name = f"{after.strip()} {before.strip()}"
        else:  # "Jim Smith, MD"
            name = before
    words = [w for w in name.split() if any(c.isalpha() for c in w)]
    if not words or "@" in name:
        return None
    return words[0].lower(), words[-1].lower()


def _starts_with_name(probe: str, names: tuple[str, str]) -> bool:
    """The line is the sender's name, alone or before a title: "Jim Smith | SRE", "Jim B. Smith"."""
    words = probe.split()
    bare = [w.strip(".,|").lower() for w in words]
    first, last = names
    if not bare or bare[0] != first:
        return False
    end = 1
    if first != last and last in bare[1:4]:
        end = bare.index(last, 1) + 1
    rest = " ".join(words[end:]).strip()
    return not rest or rest[0] in "|,-–—/(" or words[end - 1].endswith(",")


def _strip_tail(lines: list[str], sender: tuple[str, str] | None, below: bool) -> list[str]:
    """The stretch without a closing signature: sign-off + name, dash-led name, own name."""
    filled = [k for k, line in enumerate(lines) if line.strip()]
    if not filled:
        return lines
    probes = {k: _probe(lines[k]) for k in filled[-_TAIL_LINES:]}
    last = filled[-1]
    dash = _DASH_NAME.fullmatch(probes[last])
    if dash:
        previous = _probe(lines[filled[-2]]) if len(filled) > 1 else ""
        spaced = len(probes[last]) > 1 and probes[last][1] == " "
        words = probes[last][1:].split()
        if not (spaced and (previous[:1] in "-–—*" or not _capitalised(words))):
            return lines[:last]
    window = filled[-_TAIL_LINES:]
    for pos, k in enumerate(window):
        m = _SIGN_OFF.match(probes[k])
        if m:
            name = (m.group("name") or "").split()
            after = window[pos + 1 :]
            if name and not _capitalised(name):
                continue  # "Thanks for the help" is a sentence
            if below and name and len(filled) == 1:
                continue  # "Regards, Roman" alone under the quote: how they close the answer
            if (after or name) and all(_name_ish(probes[a]) for a in after):
                return lines[:k]
        if sender and _starts_with_name(probes[k], sender) and _name_ish(probes[k]):
            blank_before = k > 0 and not lines[k - 1].strip()
            if blank_before and all(_name_ish(probes[a]) for a in window[pos + 1 :]):
                return lines[:k]
    return lines


def _strip_signature(
    lines: list[str], sender: tuple[str, str] | None, soft: bool, below: bool = False
) -> list[str]:
    """One stretch of the sender's text without its signature."""
    first = next((k for k, line in enumerate(lines) if line.strip()), None)
    if first is not None and not below and _BANNER.match(_probe(lines[first])):
        end = next((k for k in range(first, len(lines)) if not lines[k].strip()), len(lines))
        lines = lines[end:]  # the gateway's warning paragraph on top
    for k, line in enumerate(lines):
        probe = _probe(line)
        if k and not lines[k - 1].strip() and _DISCLAIMER.match(probe):
            lines = lines[:k]  # a legal footer in a paragraph of its own
            break
        if (
            line.rstrip() in _SIGNATURE_SEPARATORS
            or (probe in _SIGNATURE_SEPARATORS and len(probe) <= 3)
            or _DASH_RULE.match(probe)  # a longer line of hyphens: "everything below is not mine"
        ):
            lines = lines[:k]
            break
        if _SENT_FROM.match(_URL_TAIL.sub(lambda m: m.group(1) or "", probe).strip()):
            lines = lines[:k]
            break
    if soft:
        lines = _strip_tail(lines, sender, below)
    while lines and (not lines[-1].strip() or _DELIMITER_LINE.match(_probe(lines[-1]))):
        lines = lines[:-1]  # a rule line above the removed header or signature
    return lines


# --- the whole body ---


def _stretches(text: str) -> list[tuple[list[str], bool]]:
    """The sender's own stretches of lines, each with whether it follows quoted text."""
    lines = _Lines(text)
    stretches: list[tuple[list[str], bool]] = []
    current: list[str] = []
    below = False  # past a quote or a header: the stretch answers or closes quoted text
    i = 0
    while i < lines.count:
        if lines.quoted[i]:
            if current:
                stretches.append((current, below))
                current = []
            below = True
            i += 1
            continue
        found = lines.header(i)
        if found is None:
            current.append(lines.lines[i])
            i += 1
            continue
        kind, col, end = found
        if col:
            current.append(lines.lines[i][:col].rstrip(" -–—"))
        if current:
            stretches.append((current, below))
            current = []
        below = True
        if kind == FORWARD:
            if tidy(line for s, _ in stretches for line in s):
                break  # the sender's text above the forward is theirs; the forward is not
            # Nothing above: the forward is what they sent, with its own header block; what
            # it quotes in turn is still history.
            current.extend(lines.lines[i : end + 1])
            i = end + 1
            j = lines.next_filled(i)
            block_end = lines._block_end(j) if j is not None else None
            if block_end is not None:
                current.extend(lines.lines[i : block_end + 1])
                i = block_end + 1
            continue
        j = lines.next_filled(end + 1)
        if j is None:
            break
        if not lines.quoted[j]:
            if kind == BLOCK and not tidy(line for s, _ in stretches for line in s):
                i = j  # a header block on top of the sender's own text: drop just the block
                continue
            break  # history without "> " marks: everything from the header down
        i = j
    if current:
        stretches.append((current, below))
    return stretches


_QP_SOFT_BREAK = re.compile(r"=\n")
_QP_ESCAPE = re.compile(r"=[0-9A-F]{2}")


def _undo_quoted_printable(text: str) -> str:
    """A body handed over still quoted-printable ("w=\nrote:", "=E2=80=AF"): decode it."""
    if len(_QP_SOFT_BREAK.findall(text[:20_000])) < 2 or not _QP_ESCAPE.search(text[:20_000]):
        return text
    try:
        return quopri.decodestring(text.encode("utf-8")).decode("utf-8")
    except (ValueError, UnicodeError):
        return text


def _extract(body: str, sender_name: str = "") -> str:
    text = _undo_quoted_printable(_clean_text(str(body))[:MAX_TEXT_CHARS])
    stretches = _stretches(text)
    sender = _sender_names(sender_name)
    for soft in (True, False):
        own = tidy(
            line
            for stretch, below in stretches
            for line in _strip_signature(stretch, sender, soft, below)
        )
        if own:
            return own
    return ""


def extract_text(body: str, sender_name: str = "") -> str:
    """What the sender wrote in a plain-text body: quoted history and signature removed.

    `sender_name` (the From display name) lets a signature that starts with the sender's
    own name go too.
    """
    try:
        return _extract(body, sender_name)
    except Exception:  # a heuristic bug must not lose the reply: keep the unquoted lines
        try:
            text = _clean_text(str(body))
            return tidy(ln for ln in text.split("\n") if not ln.lstrip().startswith(">"))
        except Exception:
            return ""


# --- the fixture table shown in the README ---


def _fixture_result(path: Path) -> tuple[str, str]:
    """(what mailflow extracts, what is expected) for one fixture file."""
    expected = path.with_suffix(".expected").read_text(encoding="utf-8").strip("\n")
    if path.suffix == ".eml":
        from .replies import parse_reply

        return parse_reply(path.read_bytes()).text, expected
    return extract_text(path.read_text(encoding="utf-8")), expected


def fixtures(root: Path) -> list[tuple[str, Path]]:
    """(family, path) of every fixture under root: one folder per family."""
    found = []
    for path in sorted(root.glob("*/*")):
        if path.suffix in (".txt", ".eml") and path.with_suffix(".expected").exists():
            found.append((path.parent.name, path))
    return found


def family_table(root: Path) -> str:
    """A Markdown table: per family, how many fixtures and how many come out exactly."""
    rows: dict[str, list[int]] = {}
    for family, path in fixtures(root):
        got, expected = _fixture_result(path)
        counts = rows.setdefault(family, [0, 0])
        counts[0] += 1
        counts[1] += got == expected
    total = [sum(c[0] for c in rows.values()), sum(c[1] for c in rows.values())]
    out = ["| family | fixtures | exact |", "| --- | ---: | ---: |"]
    for family, (count, exact) in sorted(rows.items()):
        out.append(f"| {family.replace('_', ' ')} | {count} | {exact} |")
    out.append(f"| **all** | **{total[0]}** | **{total[1]}** |")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    """`python -m mailflow.quotes --table DIR`: print the per-family fixture table."""
    if len(argv) != 2 or argv[0] != "--table":
        print("usage: python -m mailflow.quotes --table tests/fixtures/replies", file=sys.stderr)
        return 2
    print(family_table(Path(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
