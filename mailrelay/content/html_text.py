"""A plain-text alternative for an HTML body, made with the standard library's HTML parser.

The text is what a reader of the HTML would see, in reading order: blocks on their own
lines, list items with "- " or "1. ", links followed by their address, images by their
alt text. Lines are not wrapped: a text part is sent quoted-printable, which has no line
length problem, and a client wraps text to its own width better than a fixed one would.
``html_to_text`` accepts any ``str`` and never raises.
"""

from __future__ import annotations

import re
from collections import Counter
from html.parser import HTMLParser

__all__ = ["TolerantParser", "html_to_text"]

_NBSP = "\u00a0"

# What a browser never shows. <head> is handled apart: its end is often left implicit.
_HIDDEN = frozenset({"title", "style", "script", "noscript", "template"})
# Elements that may sit in <head>; any other start tag ends an unclosed <head>, as in a browser.
_HEAD_CONTENT = frozenset({"title", "style", "script", "noscript", "template", "meta", "link", "base"})
_PARAGRAPH = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "hr", "dl", "figure"})
_LINE = frozenset({
    "div", "tr", "li", "table", "caption", "dt", "dd", "section", "article", "header", "footer",
    "main", "nav", "aside", "address", "center", "form", "fieldset", "figcaption", "details",
    "summary",
})
_LISTS = frozenset({"ul", "ol"})
_CELLS = frozenset({"td", "th"})
# Characters that browsers collapse; U+00A0 and other Unicode spaces are not among them.
_COLLAPSIBLE = re.compile(r"[ \t\n\r\f]+")
_WORDS = re.compile(r"[^ \t\n\r\f]+|[ \t\n\r\f]+")
# Schemes whose address means nothing to someone reading the text.
_UNSHOWN_SCHEMES = frozenset({"cid", "javascript", "vbscript", "data"})
_COMMENT_END = re.compile(r"(?:-?|(.*?)--!?)>", re.DOTALL)  # matched right after "<!--"
_MAX_INDENT = 8  # list levels indented; deeper ones are not, so text stays linear in size


class TolerantParser(HTMLParser):
    """``HTMLParser`` that never raises, stays linear and reads markup more like browsers.

    - ``<![...`` is a bogus comment up to the next ``>``; the standard parser raises
      ``AssertionError`` on a marked section it does not know (``<![foo[``).
    - Comments end as in HTML: ``<!-->`` and ``<!--->`` are whole comments and ``--!>``
      ends one, while ``-- >`` does not.
    - Markup left unterminated at the end of the input (``<a href="x``, ``<!--``) is
      dropped with everything after it, as browsers do. A Python without the fix for
      CVE-2025-6069 (3.11.7 is one) instead rereads the rest of the input once per
      character there, which is quadratic: 60 kB of ``<a `` took a minute.

    Shared with ``html_policy``.
    """

    def parse_marked_section(self, i: int, report: int = 1) -> int:
        end = self.rawdata.find(">", i + 3)
        return -1 if end < 0 else end + 1

    def parse_comment(self, i: int, report: int = 1) -> int:
        end = _COMMENT_END.match(self.rawdata, i + 4)
        if end is None:
            return -1
        if report:
            self.handle_comment(end.group(1) or "")
        return end.end()

    def close(self) -> None:
        # What feed() left over starts where the parser stopped waiting for more input.
        # "</" alone is text to a browser; any other unterminated markup is not shown.
        leftover = self.rawdata
        if leftover.startswith("<") and leftover not in ("<", "</") and not self.cdata_elem:
            self.rawdata = ""
        super().close()


def html_to_text(html: str) -> str:
    """The text a reader of ``html`` sees, one block per line, at most one blank line in a row."""
    reader = _TextReader()
    reader.feed(html)
    reader.close()
    return reader.text()


class _TextReader(TolerantParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._out: list[str] = []
        self._started = False  # anything written yet; breaks before it are dropped
        self._fresh = True  # no word on the current line yet (a list marker is not one)
        self._newlines = 0  # line breaks owed before the next word
        self._space = False  # a collapsed space owed before the next word on this line
        self._hidden: Counter[str] = Counter()
        self._in_head = False
        self._pre = 0
        self._pre_opened = False  # a newline right after <pre> is not content
        self._lists: list[list[int]] = []  # [next number] for <ol>, [] for <ul>
        self._link: tuple[str, list[str]] | None = None  # the open link's href and words

    def text(self) -> str:
        joined = "".join(self._out).replace(_NBSP, " ")
        lines = "\n".join(line.rstrip() for line in joined.split("\n"))
        return re.sub(r"\n{3,}", "\n\n", lines).strip()

    # Parser callbacks.

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._pre_opened = False
        if self._in_head and tag not in _HEAD_CONTENT:
            self._in_head = False
        if tag == "head":
            self._in_head = True
        elif tag in _HIDDEN:
            self._hidden[tag] += 1
        elif tag in _PARAGRAPH or (tag in _LISTS and not self._lists):
            self._block(2)
        elif tag in _LINE or tag in _LISTS:
            self._block(1)
        elif tag in _CELLS:
            self._whitespace()
        elif tag == "br":
            self._line_break()
        if tag in _LISTS:
            self._lists.append([_start(attrs)] if tag == "ol" else [])
        elif tag == "li":
            self._list_marker()
        elif tag == "pre":
            self._pre += 1
            self._pre_opened = True
        elif tag == "a":
            self._end_link()  # links do not nest: a browser closes the open one first
            self._link = (_attr(attrs, "href").strip(), [])
        elif tag == "img":
            alt = " ".join(_attr(attrs, "alt").split())
            if alt:
                self._word(f"[{alt}]")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        # HTML ignores the slash: "<div/>" opens a div, and void elements end anyway.
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag == "head":
            self._in_head = False
        elif tag == "br":
            self._line_break()  # browsers read a stray </br> as <br>
        elif self._hidden[tag]:
            self._hidden[tag] -= 1
        elif tag in _PARAGRAPH or (tag in _LISTS and len(self._lists) <= 1):
            self._block(2)
        elif tag in _LINE or tag in _LISTS:
            self._block(1)
        if tag in _LISTS and self._lists:
            self._lists.pop()
        elif tag == "pre" and self._pre:
            self._pre -= 1
        elif tag == "a":
            self._end_link()

    def handle_data(self, data: str) -> None:
        if self._in_head and not data.isspace():
            self._in_head = False  # text ends an unclosed <head>, as in a browser
        if self._in_head or any(self._hidden.values()):
            return
        if self._pre:
            self._preformatted(data)
            return
        for piece in _WORDS.findall(data):
            if _COLLAPSIBLE.fullmatch(piece):
                self._whitespace()
            else:
                self._word(piece)

    # Writing.

    def _emit(self, text: str) -> None:
        """Put ``text`` on the current line, after any pending line breaks and space."""
        self._flush_newlines()
        if self._space:
            self._out.append(" ")
        self._out.append(text)
        self._started = True
        self._fresh = False
        self._space = False

    def _word(self, word: str) -> None:
        if self._fresh:
            word = word.lstrip(_NBSP)
            if not word:
                return
        self._emit(word)
        if self._link is not None:
            self._link[1].append(word)

    def _whitespace(self) -> None:
        if not self._fresh:
            self._space = True

    def _block(self, newlines: int) -> None:
        if self._started:
            self._newlines = max(self._newlines, newlines)
        self._fresh = True
        self._space = False

    def _line_break(self) -> None:
        if self._started:
            self._newlines = min(self._newlines + 1, 2)
        self._fresh = True
        self._space = False

    def _flush_newlines(self) -> None:
        if self._newlines:
            self._out.append("\n" * self._newlines)
            self._newlines = 0

    def _list_marker(self) -> None:
        depth = min(max(len(self._lists) - 1, 0), _MAX_INDENT)
        numbering = self._lists[-1] if self._lists else []
        if numbering:
            marker = f"{numbering[0]}. "
            numbering[0] += 1
        else:
            marker = "- "
        self._block(1)
        self._flush_newlines()
        self._out.append("  " * depth + marker)
        self._started = True

    def _preformatted(self, data: str) -> None:
        data = data.replace("\r\n", "\n").replace("\r", "\n")
        if self._pre_opened and data.startswith("\n"):
            data = data[1:]
        self._pre_opened = False
        for number, line in enumerate(data.split("\n")):
            if number:
                self._line_break()
            if line:
                self._emit(line)

    def _end_link(self) -> None:
        if self._link is None:
            return
        href, words = self._link
        self._link = None
        if _shows_href(href, " ".join(words)):
            self._whitespace()
            self._word(f"({href})")


def _shows_href(href: str, text: str) -> bool:
    """Whether the address adds something to the link's text for a reader."""
    if not href or not text or href.startswith("#"):
        return False
    scheme, colon, rest = href.partition(":")
    if colon and scheme.lower() in _UNSHOWN_SCHEMES:
        return False
    if colon and scheme.lower() in ("mailto", "tel"):
        href = rest.split("?", 1)[0]
    bare = href.split("://", 1)[-1].rstrip("/")
    return text.rstrip("/") not in (href.rstrip("/"), bare)


def _attr(attrs: list[tuple[str, str | None]], name: str) -> str:
    for key, value in attrs:
        if key == name:
            return value or ""
    return ""


def _start(attrs: list[tuple[str, str | None]]) -> int:
    start = _attr(attrs, "start").strip()
    return int(start) if start.isascii() and start.isdigit() and len(start) < 10 else 1
