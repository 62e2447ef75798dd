"""A linear bound on how deeply HTML nests, checked before the sanitizer runs.

nh3's parser (html5ever) costs time quadratic in the depth of the elements a document
leaves open: 8,000 unclosed ``<div>`` (40 kB) took 110 ms here and 8,000 ``<ul><li>``
(64 kB) 540 ms, so a 1 MiB body of them would hold an intake worker for minutes. Real
mail nests tens of levels deep (layout tables in tables). This scan counts the depth a
document can reach in one pass over its tags, without parsing: a start tag opens, an
end tag closes; void elements and those whose end tag is implied by the next sibling
(``li``, ``p``, ``td``, ...) do not add depth. It overestimates for odd but harmless
markup (a ``<div>`` inside a comment), which only ever refuses, never lets through.
"""

from __future__ import annotations

import re

# Beyond this depth the sanitizer is not run: the message is refused as html_too_complex.
# At this depth the worst shapes measured cost about 0.5 ms per kilobyte, so even a body
# at the sanitizer's size limit (1 MiB) is sanitized in well under a second.
MAX_DEPTH = 256

_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9:-]*)")
# Never opened for the depth count: no end tag (void), or closed by the next sibling.
_FLAT = frozenset({
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param",
    "source", "track", "wbr", "keygen", "basefont", "bgsound", "frame", "image",
    "li", "p", "td", "th", "tr", "dt", "dd", "option", "optgroup", "rb", "rt", "rp", "rtc",
    "thead", "tbody", "tfoot", "colgroup", "caption",
})


def depth(html: str, limit: int = MAX_DEPTH) -> int:
    """The deepest nesting ``html`` can reach, counting stops once it passes ``limit``."""
    level = deepest = 0
    for match in _TAG.finditer(html):
        name = match.group(2).lower()
        if name in _FLAT:
            continue
        if match.group(1):
            level = max(0, level - 1)
        else:
            level += 1
            if level > deepest:
                deepest = level
                if deepest > limit:
                    break
    return deepest
