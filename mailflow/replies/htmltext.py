"""HTML bodies to the text the sender wrote (quoted history cut at the clients' markers)."""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

from .headers import _clean_text
from .limits import MAX_HTML_CHARS, MAX_TEXT_CHARS

# --- HTML ---

_HTML_SKIP = {"script", "style", "head", "title", "noscript", "template", "xml", "object"}
_HTML_BLOCK = {
    "address", "article", "aside", "blockquote", "center", "dd", "div", "dl", "dt",
    "fieldset", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header",
    "hr", "li", "main", "nav", "ol", "p", "pre", "section", "table", "tbody", "td", "tfoot",
    "th", "thead", "tr", "ul",
}  # fmt: skip
_HTML_RAW_TEXT = {"script", "style"}  # their content is text: a "<script>" inside does not nest
_HTML_VOID = {
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param",
    "source", "track", "wbr",
}  # fmt: skip
# Outlook (web, new, Mac) starts the quoted history with these ids: everything after is history.
_HTML_STOP_IDS = (
    "divrplyfwdmsg",
    "appendonsend",
    "mail-editor-reference-message-container",
    "stopspelling",
)


class _HTMLText(HTMLParser):
    """Collects the visible text of the sender's own part of an HTML email."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip_tag: str | None = None
        self.skip_depth = 0
        self.stopped = False
        self.pending_newline = False
        self.pre = 0

    def _at_line_start(self) -> bool:
        return (
            self.pending_newline
            or not self.out
            or self.out[-1].endswith("\n")
            or self.out[-1] == "- "
        )

    def _emit(self, text: str) -> None:
        if self.pending_newline:
            if self.out and not self.out[-1].endswith("\n"):
                self.out.append("\n")
            self.pending_newline = False
        self.out.append(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.stopped:
            return
        if self.skip_tag is not None:
            if self.skip_tag == "head" and tag == "body":
                self.skip_tag = None  # <head> left open: the body still counts
            else:
                if tag == self.skip_tag and tag not in _HTML_VOID and tag not in _HTML_RAW_TEXT:
                    self.skip_depth += 1
                return
        attributes = {k.lower(): (v or "") for k, v in attrs}
        element_id = attributes.get("id", "").strip().lower()
        if element_id and any(element_id.endswith(i) for i in _HTML_STOP_IDS):
            self.stopped = True
            return
        classes = attributes.get("class", "").lower().split()
        quoted = any(c.startswith("gmail_quote") or c == "yahoo_quoted" for c in classes)
        if tag in _HTML_SKIP or tag == "blockquote" or quoted:
            if tag not in _HTML_VOID:
                self.skip_tag, self.skip_depth = tag, 1
            return
        if tag == "br":
            self._emit("\n")
        elif tag in _HTML_BLOCK:
            self.pending_newline = bool(self.out)
            if tag == "li":
                self._emit("- ")
        if tag == "pre":
            self.pre += 1

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in _HTML_SKIP:
            self.handle_endtag(tag)
        # else: HTML ignores the slash: `<script/>` opens a script running to `</script>`.

    def handle_endtag(self, tag: str) -> None:
        if self.stopped:
            return
        if self.skip_tag is not None:
            if tag == self.skip_tag:
                self.skip_depth -= 1
                if self.skip_depth <= 0:
                    self.skip_tag = None
            return
        if tag in _HTML_BLOCK:
            self.pending_newline = bool(self.out)
        if tag == "pre":
            self.pre = max(0, self.pre - 1)

    def handle_data(self, data: str) -> None:
        if self.stopped or self.skip_tag is not None:
            return
        if not self.pre:
            data = re.sub(r"[ \t\r\n\f]+", " ", data)  # HTML whitespace; &nbsp; is not one
            if self._at_line_start():
                data = data.lstrip(" ")
        if data:
            self._emit(data)


def html_to_text(html_text: str) -> str:
    """Visible text of an HTML body: scripts/styles/quoted history dropped, blocks -> lines."""
    try:
        source = _clean_text(str(html_text)[:MAX_HTML_CHARS])
        parser = _HTMLText()
        parser.feed(source)
        parser.close()
        text = "".join(parser.out)
    except Exception:  # html.parser gave up on broken markup: strip tags the crude way
        try:
            source = str(html_text)[:MAX_TEXT_CHARS]  # the regexes below are not linear
            source = re.sub(r"(?is)<(script|style|head)\b.*?</\1\s*>", " ", source)
            source = re.sub(r"(?i)<br\s*/?>|</(p|div|li|tr|h\d)\s*>", "\n", source)
            text = html.unescape(re.sub(r"<[^>]*>", "", source))
        except Exception:
            return ""
    text = _clean_text(text).replace("\u00a0", " ")
    lines = [line.rstrip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
