"""Sanitizing a producer's HTML body before it is sent from someone's mailbox.

nh3 (the Rust ammonia library) does the cleaning, with an allow-list of the markup that
email uses: tables and their presentational attributes, fonts, inline styles, images and
links with http, https, mailto, tel and cid addresses. This module adds what nh3 does not:

- ``<style>`` blocks. nh3 can keep a style element but cannot filter its CSS, so every
  block is dropped by nh3, read by a first pass with ``html.parser``, filtered here and
  written back by this module, into the head.
- The document around the body. nh3 cleans fragments and drops ``<html>``, ``<head>`` and
  ``<body>``; a full document in comes back as a full document, with the doctype, the
  ``<html>`` and ``<body>`` attributes that email templates rely on (``bgcolor``,
  ``style``), the harmless ``<meta name>`` hints (viewport, color-scheme) and the styles.
- Counting. nh3 does not say what it removed, so the first pass counts it with the same
  rules (URLs are even checked by asking nh3 itself). On malformed markup the two parsers
  can disagree, so counts are then estimates; on well-formed markup they are exact.

What is dropped without being counted, because it neither runs nor shows: comments
(Outlook's ``<!--[if mso]>`` sections are comments to every other client), ``<title>``,
``<meta>`` other than ``http-equiv`` ones that act (refresh, set-cookie, ...), namespace
declarations, and a producer's ``rel`` on links, which is replaced by
``rel="noopener noreferrer"``.

``data:`` URLs are refused, except raster images (png, gif, jpeg, webp, bmp) where the
address can only ever be loaded as an image: ``<img src>``, ``background`` and CSS
``url()``. Such an image cannot run anything, and refusing it would blank pictures some
clients (Apple Mail, Thunderbird) show. ``data:image/svg+xml`` is refused: SVG is a document.

Cost: this module's own passes are linear, but nh3's HTML parser (html5ever) is not on
some hostile markup: 100,000 nested ``<ul><li>`` (500 kB) take minutes, a million ``&``
seconds, and unclosed formatting tags can multiply the output. Callers bound the size of
what they pass, or the time it may take.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from html import escape
from typing import Final

import nh3

from mailrelay.content.html_text import TolerantParser

__all__ = ["KINDS", "LINK_REL", "Sanitized", "sanitize"]

# The kinds of removal ``Sanitized.removed`` counts.
KINDS: Final = ("element", "attribute", "url", "style")

# Set on every link: a link opened in a new tab cannot reach back into the mail client's
# page, and the client's address is not sent as Referer.
LINK_REL: Final = "noopener noreferrer"

_TAGS = frozenset({
    "a", "abbr", "acronym", "address", "article", "aside", "b", "bdi", "bdo", "big",
    "blockquote", "br", "caption", "center", "cite", "code", "col", "colgroup", "dd", "del",
    "details", "dfn", "div", "dl", "dt", "em", "figcaption", "figure", "font", "footer", "h1",
    "h2", "h3", "h4", "h5", "h6", "header", "hr", "i", "img", "ins", "kbd", "li", "main",
    "mark", "nav", "nobr", "o:p", "ol", "p", "pre", "q", "rp", "rt", "ruby", "s", "samp",
    "section", "small", "span", "strike", "strong", "sub", "summary", "sup", "table", "tbody",
    "td", "tfoot", "th", "thead", "time", "tr", "tt", "u", "ul", "var", "wbr",
})
# Removed with everything inside: their content is code, a document of its own, or text
# that no client shows as part of the message. ("o:p" above is Word's empty paragraph.)
_DROPPED_WITH_CONTENT = frozenset({
    "script", "style", "title", "template", "noscript", "noembed", "noframes", "iframe",
    "object", "applet", "svg", "math", "select", "textarea",
})
_GENERIC_ATTRIBUTES = frozenset({
    "align", "background", "bgcolor", "class", "dir", "height", "id", "lang", "role", "style",
    "title", "valign", "width",
})
_ATTRIBUTE_PREFIXES = frozenset({"aria-", "data-"})
_CELL_ATTRIBUTES = frozenset({
    "abbr", "axis", "bordercolor", "colspan", "headers", "nowrap", "rowspan", "scope",
})
_TAG_ATTRIBUTES: dict[str, frozenset[str]] = {
    "a": frozenset({"href", "name", "target"}),
    "img": frozenset({"alt", "border", "hspace", "src", "vspace"}),
    "table": frozenset({"border", "bordercolor", "cellpadding", "cellspacing", "frame", "rules",
                        "summary"}),
    "td": _CELL_ATTRIBUTES,
    "th": _CELL_ATTRIBUTES,
    "tr": frozenset({"bordercolor"}),
    "col": frozenset({"span"}),
    "colgroup": frozenset({"span"}),
    "font": frozenset({"color", "face", "size"}),
    "hr": frozenset({"color", "noshade", "size"}),
    "ol": frozenset({"reversed", "start", "type"}),
    "ul": frozenset({"type"}),
    "li": frozenset({"type", "value"}),
    "blockquote": frozenset({"cite", "type"}),
    "q": frozenset({"cite"}),
    "del": frozenset({"cite", "datetime"}),
    "ins": frozenset({"cite", "datetime"}),
    "time": frozenset({"datetime"}),
}
_NH3_ATTRIBUTES = {"*": _GENERIC_ATTRIBUTES, **_TAG_ATTRIBUTES}

_URL_ATTRIBUTES = frozenset({"href", "src", "background", "cite"})
_URL_SCHEMES = frozenset({"http", "https", "mailto", "tel", "cid"})
# nh3 lets data: through; _Urls then keeps raster images only, and only in image places.
_NH3_URL_SCHEMES = _URL_SCHEMES | {"data"}
_CSS_URL_SCHEMES = frozenset({"http", "https", "cid"})
_RASTER_DATA = re.compile(r"data:image/(?:png|gif|jpe?g|webp|bmp)[;,]", re.IGNORECASE)
_SCHEME = re.compile(r"([a-zA-Z][a-zA-Z0-9+.\-]*):")
# What a URL parser ignores: tabs and newlines anywhere, controls and spaces at the ends.
_URL_IGNORED = re.compile(r"[\t\n\r]")
_C0_AND_SPACE = "".join(map(chr, range(0x21)))

# The document around the body, written back by this module.
_BODY_ATTRIBUTES = frozenset({
    "alink", "background", "bgcolor", "class", "dir", "id", "lang", "leftmargin", "link",
    "marginheight", "marginwidth", "style", "text", "topmargin", "vlink",
})
_HTML_ATTRIBUTE = re.compile(r"lang|dir|xmlns(?::[a-z][a-z0-9-]*)?")
_SHEET_ATTRIBUTES = frozenset({"media", "type"})
_INERT_HTTP_EQUIV = frozenset({"content-type", "content-language", "x-ua-compatible"})
_KEPT_META_NAMES = frozenset({
    "viewport", "color-scheme", "supported-color-schemes",
    "x-apple-disable-message-reformatting", "format-detection",
})
_DOCTYPE = re.compile(
    r"""doctype\s+html(?:\s+(?:public|system)(?:\s+(?:"[^"<>]*"|'[^'<>]*')){1,2})?\s*""",
    re.IGNORECASE,
)
_SURROGATE = re.compile("[\ud800-\udfff]")
# Whitespace at the ends of <body> shows nowhere; what was between head elements lands there.
_HTML_SPACE = " \t\n\r\f"

# CSS is split into declarations and rule preludes at every "{" and "}", and at ";" outside
# parentheses (a data: URL in url() holds one); never inside strings or comments.
_CSS_TOKEN = re.compile(
    r"""
      "(?:[^"\\\n]|\\.)*"?      # a string, perhaps unterminated
    | '(?:[^'\\\n]|\\.)*'?
    | /\*.*?(?:\*/|\Z)          # a comment
    | \\.                       # an escaped character is never a delimiter
    | [(){};]
    | [^"'/\\(){};]+
    | [/\\]
    """,
    re.DOTALL | re.VERBOSE,
)
_CSS_ESCAPE = re.compile(r"\\(?:([0-9a-fA-F]{1,6})(?:\r\n|[ \t\n\r\f])?|(\r\n|[\n\r\f])|(.))", re.DOTALL)
# Matched against CSS with escapes decoded, NFKC-folded (old IE read full-width letters),
# lowercased and without whitespace. "behavior" and "-moz-binding" attach code to elements.
_CSS_DANGER = re.compile(r"expression\(|javascript:|vbscript:|livescript:|-moz-binding|behaviou?r:|@import")
_CSS_URL = re.compile(r"""(?:url|src)\((["']?)([^"')]*)""")
_WHITESPACE = re.compile(r"\s+")
# "</style" would end the element early, and no "<script" should appear anywhere; "\3c " is
# "<" to CSS. "<!--", which old templates wrap their CSS in, is left alone.
_TAG_OPEN = re.compile(r"<(?=[A-Za-z/])")


@dataclass(frozen=True)
class Sanitized:
    """The cleaned HTML and what was taken out of it.

    ``removed`` maps a kind from ``KINDS`` to how many were removed, with only kinds
    that occurred. ``changed`` is true iff anything was removed, that is iff what runs or
    what a reader sees may differ from the producer's HTML; the markup itself is always
    re-serialized (attribute quoting, entities, ``rel`` on links).
    """

    html: str
    removed: dict[str, int] = field(hash=False)
    changed: bool


def sanitize(html: str) -> Sanitized:
    """Clean ``html`` for sending. Accepts any ``str`` and never raises."""
    # Lone surrogates cannot cross into nh3 (they are not UTF-8); a browser shows U+FFFD.
    html = _SURROGATE.sub("\ufffd", html)
    removed: Counter[str] = Counter()
    urls = _Urls()
    scan = _Scan(urls, removed)
    scan.feed(html)
    scan.close()
    body = nh3.clean(
        html,
        tags=_TAGS,
        clean_content_tags=_DROPPED_WITH_CONTENT,
        attributes=_NH3_ATTRIBUTES,
        attribute_filter=_attribute_filter(urls, removed),
        strip_comments=True,
        link_rel=LINK_REL,
        generic_attribute_prefixes=_ATTRIBUTE_PREFIXES,
        url_schemes=_NH3_URL_SCHEMES,
    )
    sheets = []
    for attributes, css in scan.sheets:
        cleaned, dropped = _clean_stylesheet(css)
        removed["style"] += dropped
        if cleaned.strip():
            sheets.append(f"<style{_render(attributes)}>{cleaned}</style>")
    counts = {kind: removed[kind] for kind in KINDS if removed[kind]}
    return Sanitized(_assemble(scan, sheets, body), counts, bool(counts))


def _assemble(scan: _Scan, sheets: list[str], body: str) -> str:
    if not scan.document:
        return "".join(sheets) + body
    metas = [f"<meta{_render(meta)}>" for meta in scan.metas]
    lines = [f"<!{scan.doctype}>"] if scan.doctype else []
    lines += [f"<html{_render(scan.html_attributes)}>", "<head>", *metas, *sheets, "</head>",
              f"<body{_render(scan.body_attributes)}>{body.strip(_HTML_SPACE)}</body>", "</html>"]
    return "\n".join(lines)


def _render(attributes: dict[str, str]) -> str:
    # Names come from this module's allow-lists; values are escaped.
    return "".join(f' {name}="{escape(value)}"' for name, value in attributes.items())


class _Urls:
    """Decides URL attributes. What nh3 keeps is asked of nh3, so counts match its removals."""

    def __init__(self) -> None:
        self._kept_by_nh3: dict[str, bool] = {}

    def allowed(self, value: str, *, image: bool) -> bool:
        text = _URL_IGNORED.sub("", value).strip(_C0_AND_SPACE)
        scheme = _SCHEME.match(text)
        if scheme is not None:
            name = scheme.group(1).lower()
            raster = name == "data" and image and _RASTER_DATA.match(text) is not None
            if name not in _URL_SCHEMES and not raster:
                return False
        return self._nh3_keeps(value)

    def _nh3_keeps(self, value: str) -> bool:
        # nh3 also drops absolute URLs that do not parse ("http://[x", a bad port).
        kept = self._kept_by_nh3.get(value)
        if kept is None:
            probe = nh3.clean(f'<a href="{escape(value)}"></a>', tags={"a"}, attributes={"a": {"href"}},
                              url_schemes=_NH3_URL_SCHEMES, link_rel=None)
            kept = self._kept_by_nh3[value] = "href=" in probe
        return kept


def _is_image_url(tag: str, name: str) -> bool:
    return name == "background" or (tag == "img" and name == "src")


def _allowed_attribute(tag: str, name: str) -> bool:
    return (name in _GENERIC_ATTRIBUTES or name in _TAG_ATTRIBUTES.get(tag, ())
            or any(name.startswith(prefix) for prefix in _ATTRIBUTE_PREFIXES))


def _attribute_filter(urls: _Urls, removed: Counter[str]) -> Callable[[str, str, str], str | None]:
    """nh3's last word on each allowed attribute. Only styles are counted here: the rest
    was counted by the first pass, which sees attributes nh3 drops before asking."""

    def keep(tag: str, name: str, value: str) -> str | None:
        if tag not in _TAGS:
            return None  # nh3 also asks about elements it drops with their content
        if name in _URL_ATTRIBUTES:
            return value if urls.allowed(value, image=_is_image_url(tag, name)) else None
        if name == "style":
            cleaned, dropped = _clean_declarations(value)
            removed["style"] += dropped
            return cleaned
        return value

    return keep


class _Scan(TolerantParser):
    """The first pass: counts what nh3 will remove and keeps what nh3 cannot."""

    def __init__(self, urls: _Urls, removed: Counter[str]) -> None:
        super().__init__(convert_charrefs=True)
        self.removed = removed
        self.document = False
        self.doctype: str | None = None
        self.html_attributes: dict[str, str] = {}
        self.body_attributes: dict[str, str] = {}
        self.metas: list[dict[str, str]] = []
        self.sheets: list[tuple[dict[str, str], str]] = []
        self._urls = urls
        self._sheet: tuple[dict[str, str], list[str]] | None = None
        self._dropping: Counter[str] = Counter()  # open elements nh3 drops with their content
        self._seen: dict[str, set[str]] = {"html": set(), "body": set()}

    def handle_decl(self, decl: str) -> None:
        if decl[:7].lower() == "doctype" and not self.document:
            self.document = True
            self.doctype = decl if _DOCTYPE.fullmatch(decl) else None

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _DROPPED_WITH_CONTENT:
            # HTML ignores the slash: nh3 drops what follows "<style/>" up to "</style>".
            if not any(self._dropping.values()):
                self.removed["element"] += 1
        else:
            self.handle_starttag(tag, attrs)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes: dict[str, str] = {}
        for name, value in attrs:
            attributes.setdefault(name, value or "")  # a repeated attribute: the first counts
        inside_dropped = any(self._dropping.values())
        if tag in _DROPPED_WITH_CONTENT:
            self._dropping[tag] += 1
            if tag == "style" and not inside_dropped:
                self._open_sheet(attributes)
            elif tag != "title" and not inside_dropped:
                self.removed["element"] += 1
        elif inside_dropped:
            pass  # goes with the element around it, which is counted
        elif tag in ("html", "body"):
            self.document = True
            self._document_attributes(tag, attributes)
        elif tag == "head":
            self.document = True
            self.removed["attribute"] += len(attributes)
        elif tag == "meta":
            self._meta(attributes)
        elif tag in _TAGS:
            self._check_attributes(tag, attributes)
        else:
            self.removed["element"] += 1

    def handle_endtag(self, tag: str) -> None:
        if self._dropping[tag]:
            self._dropping[tag] -= 1
        if tag == "style" and self._sheet is not None:
            attributes, css = self._sheet
            self.sheets.append((attributes, "".join(css)))
            self._sheet = None

    def handle_data(self, data: str) -> None:
        if self._sheet is not None:
            self._sheet[1].append(data)

    def close(self) -> None:
        super().close()
        if self._sheet is not None:
            self.removed["style"] += 1  # never closed: nh3 drops it to the end of the input
            self._sheet = None

    def _open_sheet(self, attributes: dict[str, str]) -> None:
        kept = {name: value for name, value in attributes.items() if name in _SHEET_ATTRIBUTES}
        self.removed["attribute"] += len(attributes) - len(kept)
        self._sheet = (kept, [])

    def _check_attributes(self, tag: str, attributes: dict[str, str]) -> None:
        for name, value in attributes.items():
            if not _allowed_attribute(tag, name):
                if not (tag == "a" and name == "rel"):  # replaced by LINK_REL, not removed
                    self.removed["attribute"] += 1
            elif name in _URL_ATTRIBUTES and not self._urls.allowed(value, image=_is_image_url(tag, name)):
                self.removed["url"] += 1

    def _document_attributes(self, tag: str, attributes: dict[str, str]) -> None:
        kept = self.html_attributes if tag == "html" else self.body_attributes
        for name, value in attributes.items():
            if name in self._seen[tag]:
                continue  # browsers merge repeated <body> tags, the first value winning
            self._seen[tag].add(name)
            if tag == "html" and _HTML_ATTRIBUTE.fullmatch(name):
                kept[name] = value
            elif tag == "html" or name not in _BODY_ATTRIBUTES:
                self.removed["attribute"] += 1
            elif name == "background" and not self._urls.allowed(value, image=True):
                self.removed["url"] += 1
            elif name == "style":
                cleaned, dropped = _clean_declarations(value)
                self.removed["style"] += dropped
                if cleaned is not None:
                    kept[name] = cleaned
            else:
                kept[name] = value

    def _meta(self, attributes: dict[str, str]) -> None:
        equiv = attributes.get("http-equiv", "").strip().lower()
        name = attributes.get("name", "").strip().lower()
        if equiv and equiv not in _INERT_HTTP_EQUIV:
            self.removed["element"] += 1  # refresh, set-cookie, default-style: they act
        elif name in _KEPT_META_NAMES:
            kept = {"name": name}
            if "content" in attributes:
                kept["content"] = attributes["content"]
            self.metas.append(kept)


def _clean_declarations(style: str) -> tuple[str | None, int]:
    """A ``style`` attribute without its dangerous declarations, and how many were dropped.

    ``None`` when nothing is left. An attribute with nothing to drop is returned as given.
    """
    kept, dropped = [], 0
    for text, end in _css_segments(style):
        if _css_is_dangerous(text):
            dropped += 1
        else:
            kept.append(text + end)
    cleaned = "".join(kept) if dropped else style
    if _css_is_dangerous(cleaned):
        return None, dropped + 1  # danger that spans pieces: nothing of it is trusted
    return (cleaned if cleaned.strip() or not dropped else None), dropped


def _clean_stylesheet(css: str) -> tuple[str, int]:
    """A ``<style>`` block's CSS without dangerous rules or declarations, and how many
    were dropped. The result is safe to write between ``<style>`` and ``</style>``."""
    kept: list[str] = []
    dropped = 0
    skipping = 0  # depth inside a rule whose prelude was dropped
    for text, end in _css_segments(css):
        if skipping:
            skipping += {"{": 1, "}": -1}.get(end, 0)
            continue
        if _css_is_dangerous(text):
            dropped += 1
            if end == "{":
                skipping = 1
            elif end == "}":
                kept.append(end)
            continue
        kept.append(text + end)
    cleaned = "".join(kept)
    if _css_is_dangerous(cleaned):
        return "", dropped + 1
    return _TAG_OPEN.sub(r"\\3c ", cleaned), dropped


def _css_segments(css: str) -> list[tuple[str, str]]:
    """``css`` as (text, delimiter) pairs whose concatenation is ``css``; the delimiter is
    ";", "{", "}" or "" for the last piece."""
    segments: list[tuple[str, str]] = []
    current: list[str] = []
    depth = 0
    for match in _CSS_TOKEN.finditer(css):
        piece = match.group()
        if piece in ("{", "}") or (piece == ";" and depth == 0):
            segments.append(("".join(current), piece))
            current = []
            depth = 0
            continue
        if piece == "(":
            depth += 1
        elif piece == ")":
            depth = max(depth - 1, 0)
        current.append(piece)
    segments.append(("".join(current), ""))
    return segments


def _css_is_dangerous(css: str) -> bool:
    # Read both with and without comments: IE joined "expr/**/ession", and a "/*" inside
    # a string must not hide what follows it.
    without_comments = "".join(piece for piece in _CSS_TOKEN.findall(css) if not piece.startswith("/*"))
    for variant in (css, without_comments):
        unescaped = _CSS_ESCAPE.sub(_css_unescape, variant)
        flat = _WHITESPACE.sub("", unicodedata.normalize("NFKC", unescaped).lower())
        if _CSS_DANGER.search(flat):
            return True
        if any(not _css_url_allowed(match.group(2)) for match in _CSS_URL.finditer(flat)):
            return True
    return False


def _css_unescape(match: re.Match[str]) -> str:
    hex_digits, newline, char = match.groups()
    if hex_digits:
        code = int(hex_digits, 16)
        return chr(code) if 0 < code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF else "\ufffd"
    return "" if newline else char


def _css_url_allowed(url: str) -> bool:
    url = url.lstrip(_C0_AND_SPACE)
    scheme = _SCHEME.match(url)
    if scheme is None:
        return True  # relative, or a fragment such as "#default#VML"
    name = scheme.group(1)
    return name in _CSS_URL_SCHEMES or (name == "data" and _RASTER_DATA.match(url) is not None)
