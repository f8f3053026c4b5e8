"""What was learned, tried, is being done now and is left: the sections of a status report.

A reply may carry the headings `Learned:`, `Tried:`, `Now:` and `Left:` (each on its own
line or with its first item after the colon), and experiments as `tried: what → result`
(or `->`, `=>`), or `tried: what` with the result on the next line. They are read from the
posted text and kept with the timeline entry, shown grouped in the next email, and the
experiments are listed with their results in the postmortem draft. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

SECTIONS = ("learned", "tried", "now", "left")
TITLES = {"learned": "What we learned", "tried": "What we tried",
          "now": "What we are doing now", "left": "What is left"}
# What the lead's reminder offers as a reply template.
TEMPLATE = "Learned:\nTried: what you tried → what happened\nNow:\nLeft:"

_HEADING = re.compile(r"^\s*[*_#]*\s*(learned|tried|now|left)\s*[*_]*\s*:\s*[*_]*\s*(.*?)\s*$",
                      re.I)
_ARROW = re.compile(r"\s*(?:→|->|=>|⇒)\s*")
_RESULT = re.compile(r"^\s*(?:→|->|=>|⇒|result\s*:)\s*(.*?)\s*$", re.I)
_BULLET = re.compile(r"^\s*(?:[-*•·]|\d{1,2}[.)])\s+")


def _item(line: str) -> str:
    return _BULLET.sub("", line).strip()


def read(text: str) -> dict[str, Any] | None:
    """The sections found in `text` ({"learned": [...], "tried": [{"what", "result"}], ...}),
    or None when it has none of the headings."""
    found: dict[str, list[Any]] = {}
    section: str | None = None
    lines = str(text).replace("\r\n", "\n").split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        m = _HEADING.match(line)
        if m:
            section = m.group(1).lower()
            found.setdefault(section, [])
            rest = m.group(2)
            if rest:
                i = _add(found[section], section, rest, lines, i, inline=True)
            i += 1
            continue
        if section is not None and line.strip():
            if i > 0 and not lines[i - 1].strip() and not _BULLET.match(line):
                section = None  # a paragraph after a blank line: the report has ended
            else:
                i = _add(found[section], section, line, lines, i, inline=False)
        i += 1
    found = {k: v for k, v in found.items() if v}
    return {k: found[k] for k in SECTIONS if k in found} or None


def _add(items: list[Any], section: str, line: str, lines: list[str], i: int,
         inline: bool) -> int:
    """Add one item from `line`; returns the index of the last line it used."""
    text = _item(line)
    if not text:
        return i
    if section != "tried":
        items.append(text)
        return i
    what, arrow, result = _ARROW.split(text, maxsplit=1)[0], _ARROW.search(text), ""
    if arrow:
        result = text[arrow.end():].strip()
    else:
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        m = _RESULT.match(nxt)
        # `tried: X` then the result on the next line (an arrow or `result:` marks it;
        # after an inline `tried:` any plain next line is its result)
        if m or (inline and nxt.strip() and not _HEADING.match(nxt) and not _BULLET.match(nxt)):
            result = m.group(1) if m else nxt.strip()
            i += 1
    items.append({"what": what.strip(), "result": result})
    return i


def merge(reports: Iterable[dict[str, Any] | None]) -> dict[str, list[Any]]:
    """Several entries' sections as one, in order (for the next email)."""
    out: dict[str, list[Any]] = {}
    for rep in reports:
        for key in SECTIONS:
            if rep and rep.get(key):
                out.setdefault(key, []).extend(rep[key])
    return {k: out[k] for k in SECTIONS if k in out}


def experiment_text(item: dict[str, str]) -> str:
    """`what → result`, or what alone while the result is not known."""
    return f"{item['what']} → {item['result']}" if item.get("result") else item["what"]
