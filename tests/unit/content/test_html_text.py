"""html_to_text(): the text a reader of the HTML sees, laid out in lines."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailrelay.content.html_text import TolerantParser, html_to_text

CORPUS = Path(__file__).parent / "corpus"


def test_paragraphs_headings_and_line_breaks() -> None:
    html = "<h1>Title</h1><p>First   line<br>second\n line</p><p>Para two</p>"

    assert html_to_text(html) == "Title\n\nFirst line\nsecond line\n\nPara two"


def test_divs_and_rows_are_lines_not_paragraphs() -> None:
    html = ("<div>one</div><div>two</div><div><div>three</div></div>"
            "<table><tr><td>Name</td><td>Qty</td></tr><tr><td>Tea</td><td>2</td></tr></table>")

    assert html_to_text(html) == "one\ntwo\nthree\nName Qty\nTea 2"


def test_lists() -> None:
    html = ("<p>Shopping:</p><ul><li>Milk</li><li> Eggs <ul><li>brown</li><li>white</li></ul></li>"
            "<li>Bread</li></ul><ol start=3><li>three</li><li>four</li></ol><ol><li>one</li></ol>")

    assert html_to_text(html) == ("Shopping:\n\n- Milk\n- Eggs\n  - brown\n  - white\n- Bread\n\n"
                                  "3. three\n4. four\n\n1. one")


def test_links_show_their_address_when_it_adds_something() -> None:
    html = ('<p><a href="https://example.com/a?x=1&amp;y=2">Read more</a>, '
            '<a href="https://example.com/">https://example.com</a>, '
            '<a href="https://www.example.com/">www.example.com</a>, '
            '<a href="mailto:a@example.com">a@example.com</a>, '
            '<a href="mailto:a@example.com?subject=Hi">write to us</a>, '
            '<a href="tel:+441234">+441234</a>, '
            '<a href="cid:part1">inline</a>, <a href="#top">top</a>, <a>no href</a>.</p>')

    assert html_to_text(html) == ("Read more (https://example.com/a?x=1&y=2), https://example.com, "
                                  "www.example.com, a@example.com, "
                                  "write to us (mailto:a@example.com?subject=Hi), +441234, "
                                  "inline, top, no href.")


def test_images_show_their_alt_text() -> None:
    html = ('<p>Logo: <img src="cid:logo" alt=" Our  logo "> and <img src="x.png" alt=""> '
            '<img src="y.png"></p><a href="https://x.example/"><img src="z.png" alt="Shop"></a>'
            '<a href="https://x.example/spacer"><img src="s.gif"></a>')

    assert html_to_text(html) == "Logo: [Our logo] and\n\n[Shop] (https://x.example/)"


def test_entities_and_non_breaking_spaces() -> None:
    html = "<p>a&nbsp;&nbsp;b &amp; &lt;c&gt; &copy; &#8364; &#x2014; &euro</p>"

    # "&euro" without ";" is not a reference; browsers show it as written too.
    assert html_to_text(html) == "a  b & <c> © € — &euro"


def test_head_style_script_and_title_are_skipped() -> None:
    html = ("<html><head><title>Hidden</title><style>p{color:red}</style><script>x()</script>"
            "</head><body><p>Shown</p><script>y()</script><noscript>no</noscript>"
            "<template>t</template></body></html>")

    assert html_to_text(html) == "Shown"


def test_text_after_an_unclosed_head_is_shown() -> None:
    assert html_to_text("<head><title>T</title><p>Body text") == "Body text"


def test_preformatted_text_keeps_its_spaces_and_lines() -> None:
    html = "<p>Run:</p><pre>\nGET /v2/reports\n    ?from=2024-01-01\n</pre><p>Done.</p>"

    assert html_to_text(html) == "Run:\n\nGET /v2/reports\n    ?from=2024-01-01\n\nDone."


def test_at_most_one_blank_line_and_no_trailing_spaces() -> None:
    html = "<p>a &nbsp;</p><br><br><br><br><p>b</p><div></div><div> </div><p>c</p>&nbsp;<br>&nbsp;"

    assert html_to_text(html) == "a\n\nb\n\nc"


def test_empty_and_blank_input() -> None:
    assert html_to_text("") == ""
    assert html_to_text("  <p> </p> &nbsp; ") == ""


def test_comments_and_conditional_sections_are_skipped() -> None:
    html = "<p>a<!-- note -->b<!--[if mso]>Outlook only<![endif]--><![if !mso]>c<![endif]></p><![foo[x]]>"

    assert html_to_text(html) == "abc"


def test_a_transactional_email() -> None:
    html = (CORPUS / "newsletter" / "password_reset.html").read_text(encoding="utf-8")

    assert html_to_text(html) == """\
[Notely]

Hi Sam,

Someone (hopefully you) asked to reset the password for sam.okafor@example.net. The link \
below works for 30 minutes:

Choose a new password (https://app.notely.example/reset?token=Zm9vYmFyLXNlY3JldA&utm_source=system\
&utm_medium=email)

Or enter this code in the app: 482 913

A few tips for a strong password:

- Use at least 12 characters.
- Don't reuse a password from another site.
- Consider a password manager – we like these (https://example.com/password-managers).

If you didn’t ask for this, you can ignore this email — your password stays the same.

Notely Ltd, 5 Canal Walk, Leeds LS1 4AB • Privacy (https://notely.example/privacy)"""


@pytest.mark.parametrize("markup", ["<![foo[ x ]]>", "<![", "<!DOCTYPE x [ <!X> ]>", "<a b='", "</"])
def test_the_tolerant_parser_takes_what_the_standard_one_rejects(markup: str) -> None:
    parser = TolerantParser()
    parser.feed(markup)
    parser.close()


@pytest.mark.parametrize(("html", "text"), [
    ("a<!-->b", "ab"),
    ("a<!--->b", "ab"),
    ("a<!-- x --!>b", "ab"),
    ("a<!-- x -- >c-->b", "ab"),
])
def test_comments_end_where_browsers_end_them(html: str, text: str) -> None:
    assert html_to_text(html) == text


@pytest.mark.parametrize(("html", "text"), [
    ("shown <a href='x", "shown"),
    ("shown <!-- never closed <p>hidden", "shown"),
    ("shown <b", "shown"),
    ("shown </", "shown </"),
    ("shown <", "shown <"),
    ("shown &amp", "shown &"),
])
def test_markup_unterminated_at_the_end_is_dropped_like_browsers_do(html: str, text: str) -> None:
    assert html_to_text(html) == text


@pytest.mark.parametrize("html", ["<a " * 200_000, "<!--" * 200_000, "<a b='" * 100_000,
                                  "<a href=x>w " * 100_000, "<ul><li>x" * 50_000])
def test_pathological_input_takes_linear_time(html: str) -> None:
    # Python 3.11.7's parser alone needs minutes for the first three (CVE-2025-6069).
    started = time.monotonic()
    html_to_text(html)

    assert time.monotonic() - started < 10


PIECES = st.sampled_from([
    "<", ">", "</", "/>", "<!--", "-->", "<![", "]]>", "<!DOCTYPE", "=", '"', " ", "\n", "\r", "\t",
    "&", "&nbsp;", "&#", ";", "<p>", "</p>", "<br>", "<li>", "<ol>", "</ol>", "<ul>", "<pre>",
    "</pre>", "<a href='x'>", "</a>", "<img alt='a'>", "<head>", "</head>", "<title>", "<style>",
    "</style>", "<script>", "<td>", "<tr>", "x", "word", "\u00a0",
])


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.lists(PIECES, max_size=60).map("".join)))
def test_any_text_gives_tidy_text(html: str) -> None:
    text = html_to_text(html)

    assert text == text.strip()
    assert "\n\n\n" not in text
    assert all(line == line.rstrip() for line in text.split("\n"))
