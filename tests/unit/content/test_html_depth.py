"""The depth bound that keeps hostile HTML from stalling the sanitizer."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mailrelay.content import html_depth
from mailrelay.content.policy import apply
from mailrelay.errors import ValidationError
from mailrelay.message import validate

NEWSLETTERS = sorted((Path(__file__).parent / "corpus" / "newsletter").glob("*.html"))


@pytest.mark.parametrize(("html", "expected"), [
    ("<p>hi</p>", 0),
    ("<div><div><span>x</span></div></div>", 3),
    ("<ul>" + "<li>item" * 500 + "</ul>", 1),  # li's end tag is implied: a flat list
    ("<table>" + "<tr><td>cell" * 300 + "</table>", 1),
    ("<br><img src=x><hr>" * 100, 0),
    ("<div>" * 10 + "</div>" * 20 + "<div>", 10),  # stray end tags never go below zero
    ("<DIV><Div>x", 2),
])
def test_depth_of_documents(html: str, expected: int) -> None:
    assert html_depth.depth(html) == expected


HOSTILE = {
    "unclosed divs": "<div>" * 100_000 + "x",
    "nested lists": "<ul><li>" * 60_000 + "x",
    "nested quotes": "<blockquote>" * 80_000,
    "formatting": "<b><i><u><s>" * 50_000,
    "tables in cells": "<table><tr><td>" * 60_000,
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_deep_html_is_refused_before_the_sanitizer_runs(name: str) -> None:
    message = validate({"from": "s@example.com", "to": ["r@example.org"], "html": HOSTILE[name]})
    started = time.perf_counter()
    with pytest.raises(ValidationError) as err:
        apply(message, "sanitize")
    assert err.value.code == "html_too_complex"
    assert time.perf_counter() - started < 2.0  # a linear scan, not nh3's quadratic parse


def test_a_deep_body_under_the_bound_is_still_sanitized_quickly() -> None:
    """The worst shape at the bound, repeated up to the size limit, stays well under a
    second: the bound is what makes the sanitizer's cost linear in the size again."""
    block = "<ul><li>" * html_depth.MAX_DEPTH + "x" + "</li></ul>" * html_depth.MAX_DEPTH
    html = block * (1_000_000 // len(block))
    message = validate({"from": "s@example.com", "to": ["r@example.org"], "html": html})
    started = time.perf_counter()
    applied = apply(message, "sanitize")
    assert applied.html_removed is not None
    assert time.perf_counter() - started < 5.0


@pytest.mark.parametrize("path", NEWSLETTERS, ids=lambda p: p.name)
def test_real_newsletters_are_far_below_the_bound(path: Path) -> None:
    assert 0 < html_depth.depth(path.read_text()) <= 40


def test_with_the_policy_off_deep_html_is_not_scanned_or_refused() -> None:
    message = validate({"from": "s@example.com", "to": ["r@example.org"], "text": "t",
                        "html": "<div>" * 1000})
    assert apply(message, "off").message.html == message.html
