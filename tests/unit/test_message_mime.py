"""build_mime(): structure, round-trips through the email parser, determinism, size."""

from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import re
import uuid
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage
from typing import Any

import pytest

from mailrelay.message import Message, build_mime, make_message_id, mime_size, validate

DATE = datetime(2026, 3, 9, 8, 5, 7, tzinfo=UTC)
PNG_1 = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 3
PNG_2 = b"\x89PNG\r\n\x1a\nsecond image"
PDF = b"%PDF-1.7\n" + bytes(range(255, -1, -1)) * 40
CSV = "name,amount\r\nJörg,12\r\n".encode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def message(**changes: Any) -> Message:
    raw: dict[str, Any] = {
        "from": '"Jörg Müller" <jo@bücher.example>',
        "to": ["Ann Example <ann@example.com>", '"Doe, Jo" <jo.doe@example.org>'],
        "cc": ["cc@example.net"],
        "bcc": ["Hidden Person <hidden@example.com>"],
        "reply_to": "replies@example.com",
        "subject": "Quarterly report",
        "text": "Hello,\nthe report is attached.\n",
        "html": "<p>Hello,</p><p>the report is attached.</p><img src=\"cid:logo@example\">",
        "headers": {"X-Campaign": "q1", "List-Unsubscribe": "<https://example.com/u?token=abc>"},
    }
    raw.update(changes)
    return validate({k: v for k, v in raw.items() if v is not None})


def full_message() -> Message:
    return message(
        inline=[
            {"filename": "logo.png", "content_type": "image/png", "content": b64(PNG_1),
             "cid": "logo@example"},
            {"filename": "banner.png", "content_type": "image/png", "content": b64(PNG_2),
             "cid": "banner"},
        ],
        attachments=[
            {"filename": "report.pdf", "content_type": "application/pdf", "content": b64(PDF)},
            {"filename": "données été.csv", "content_type": "text/csv", "content": b64(CSV)},
        ],
    )


def build(msg: Message, **kwargs: Any) -> bytes:
    kwargs.setdefault("message_id", "<0123456789abcdef0123456789abcdef@xn--bcher-kva.example>")
    kwargs.setdefault("date", DATE)
    return build_mime(msg, **kwargs)


def parse(data: bytes) -> EmailMessage:
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def children(part: EmailMessage) -> list[EmailMessage]:
    payload = part.get_payload()
    assert isinstance(payload, list)
    parts = [child for child in payload if isinstance(child, EmailMessage)]
    assert len(parts) == len(payload)
    return parts


def decoded(part: EmailMessage) -> bytes:
    data = part.get_payload(decode=True)
    assert isinstance(data, bytes)
    return data


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def header_block(data: bytes) -> bytes:
    return data.split(b"\r\n\r\n", 1)[0]


def test_full_nesting_is_mixed_related_alternative() -> None:
    parsed = parse(build(full_message()))
    assert parsed.get_content_type() == "multipart/mixed"
    related, pdf, csv = children(parsed)
    assert related.get_content_type() == "multipart/related"
    assert related.get_param("type") == "multipart/alternative"
    alternative, logo, banner = children(related)
    assert alternative.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in children(alternative)] == ["text/plain", "text/html"]
    assert [p.get_content_type() for p in (logo, banner, pdf, csv)] == [
        "image/png", "image/png", "application/pdf", "text/csv"]


def test_inline_parts_carry_content_id_and_inline_disposition() -> None:
    related = children(parse(build(full_message())))[0]
    _, logo, banner = children(related)
    assert (logo["Content-ID"], banner["Content-ID"]) == ("<logo@example>", "<banner>")
    assert [p.get_content_disposition() for p in (logo, banner)] == ["inline", "inline"]
    assert [p.get_filename() for p in (logo, banner)] == ["logo.png", "banner.png"]
    assert sha(logo.get_content()) == sha(PNG_1)
    assert sha(banner.get_content()) == sha(PNG_2)


def test_attachments_decode_to_the_same_bytes_and_names() -> None:
    _, pdf, csv = children(parse(build(full_message())))
    assert [p.get_content_disposition() for p in (pdf, csv)] == ["attachment", "attachment"]
    assert [p.get_filename() for p in (pdf, csv)] == ["report.pdf", "données été.csv"]
    assert pdf["Content-Transfer-Encoding"] == "base64"
    assert sha(decoded(pdf)) == sha(PDF)
    assert sha(decoded(csv)) == sha(CSV)


def test_text_and_html_decode_to_what_was_given() -> None:
    msg = message(text="Grüße aus Köln\nzweite Zeile", html="<p>Ünïcödé ✓</p>")
    alternative = parse(build(msg))
    text, html = children(alternative)
    assert text.get_content().replace("\r\n", "\n").rstrip("\n") == "Grüße aus Köln\nzweite Zeile"
    assert html.get_content().replace("\r\n", "\n").rstrip("\n") == "<p>Ünïcödé ✓</p>"
    assert text.get_content_charset() == "utf-8"
    assert text["Content-Transfer-Encoding"] in ("quoted-printable", "base64")


def test_text_only_and_html_only_are_single_parts() -> None:
    text_only = parse(build(message(html=None)))
    assert text_only.get_content_type() == "text/plain"
    assert not text_only.is_multipart()
    html_only = parse(build(message(text=None)))
    assert html_only.get_content_type() == "text/html"
    assert not html_only.is_multipart()
    assert html_only.get_content().startswith("<p>Hello,</p>")


def test_inline_without_attachments_makes_related_the_root() -> None:
    msg = message(html=None, inline=[{"filename": "a.png", "content_type": "image/png",
                                      "content": b64(PNG_2), "cid": "a"}])
    parsed = parse(build(msg))
    assert parsed.get_content_type() == "multipart/related"
    assert parsed.get_param("type") == "text/plain"
    assert [p.get_content_type() for p in children(parsed)] == ["text/plain", "image/png"]


def test_top_headers_in_order_then_producer_headers() -> None:
    data = build(full_message())
    names = [line.split(b":", 1)[0] for line in header_block(data).split(b"\r\n")
             if not line.startswith(b" ")]
    assert names == [b"From", b"To", b"Cc", b"Reply-To", b"Subject", b"Date", b"Message-ID",
                     b"MIME-Version", b"X-Campaign", b"List-Unsubscribe", b"Content-Type"]
    parsed = parse(data)
    assert parsed["Date"] == "Mon, 09 Mar 2026 08:05:07 +0000"
    assert parsed["Message-ID"] == "<0123456789abcdef0123456789abcdef@xn--bcher-kva.example>"
    assert parsed["MIME-Version"] == "1.0"
    assert parsed["X-Campaign"] == "q1"


def test_bcc_only_when_asked() -> None:
    msg = full_message()
    assert parse(build(msg))["Bcc"] is None
    assert b"hidden@example.com" not in build(msg)
    with_bcc = parse(build(msg, include_bcc=True))
    assert [a.addr_spec for a in with_bcc["Bcc"].addresses] == ["hidden@example.com"]
    assert with_bcc["Bcc"].addresses[0].display_name == "Hidden Person"


def test_recipients_and_unicode_display_names_round_trip() -> None:
    parsed = parse(build(full_message()))
    sender = parsed["From"].addresses[0]
    assert (sender.display_name, sender.addr_spec) == ("Jörg Müller", "jo@xn--bcher-kva.example")
    assert [(a.display_name, a.addr_spec) for a in parsed["To"].addresses] == [
        ("Ann Example", "ann@example.com"), ("Doe, Jo", "jo.doe@example.org")]
    assert [a.addr_spec for a in parsed["Cc"].addresses] == ["cc@example.net"]
    assert [a.addr_spec for a in parsed["Reply-To"].addresses] == ["replies@example.com"]


def test_headers_are_ascii_with_encoded_words_for_unicode() -> None:
    data = build(message(subject="Grüße, 世界"))
    headers = header_block(data)
    assert headers.isascii()
    assert b"From: =?utf-8?b?" in headers
    assert parse(data)["Subject"] == "Grüße, 世界"


@pytest.mark.parametrize(
    "subject",
    ["", "plain words", "a  double  space", " leading and trailing ", "=?utf-8?q?not_encoded?=",
     "x" * 998, "long " * 150 + "end", "€" * 300, "Ça va? — très bien! " * 20],
)
def test_subjects_round_trip(subject: str) -> None:
    data = build(message(subject=subject))
    assert parse(data)["Subject"] == subject
    assert all(len(line) <= 78 for line in header_block(data).split(b"\r\n")
               if not line.startswith((b"Message-ID", b"List-Unsubscribe")))


@pytest.mark.parametrize(
    "name",
    ["=?utf-8?q?not_encoded?=", 'Quote "me"', "back\\slash", "  padded  ", "Ünïcödé, Jr."],
)
def test_awkward_display_names_round_trip(name: str) -> None:
    quoted = name.replace("\\", "\\\\").replace('"', '\\"')
    parsed = parse(build(message(to=[f'"{quoted}" <jo@example.com>'])))
    assert parsed["To"].addresses[0].display_name == name


def test_quoted_local_part_survives() -> None:
    data = build(message(to=['"john..doe"@example.com', '"a b"@example.com']))
    assert b'To: "john..doe"@example.com, "a b"@example.com\r\n' in data


@pytest.mark.parametrize(
    "filename",
    ["résumé.pdf", "=?utf-8?q?x?=.txt", 'quote"semi;colon.txt', "日本語のファイル名" * 10 + ".txt",
     "a" * 255, "%41 'tick'.txt", "x" * 40 + " spaces inside " + "y" * 40],
)
def test_filenames_round_trip(filename: str) -> None:
    msg = message(attachments=[{"filename": filename, "content_type": "application/octet-stream",
                                "content": b64(b"data")}])
    data = build(msg)
    attachment = children(parse(data))[1]
    assert attachment.get_filename() == filename
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))


def test_long_producer_header_is_not_encoded() -> None:
    url = "<https://example.com/unsubscribe?token=" + "t" * 150 + ">"
    data = build(message(headers={"List-Unsubscribe": url, "X-Words": "one two " * 30}))
    assert b"List-Unsubscribe: " + url.encode() + b"\r\n" in data
    parsed = parse(data)
    assert parsed["List-Unsubscribe"] == url
    assert parsed["X-Words"] == "one two " * 30


def test_build_is_deterministic() -> None:
    assert build(full_message()) == build(full_message())
    first = build(full_message(), message_id="<a@example.com>")
    second = build(full_message(), message_id="<b@example.com>")
    assert first.replace(b"<a@example.com>", b"<b@example.com>") == second


def test_boundaries_differ_per_depth_and_per_content() -> None:
    one = re.findall(rb'boundary="([^"]+)"', build(full_message()))
    assert len(set(one)) == 3
    assert all(b.startswith(b"=_mr_") for b in one)
    other = re.findall(rb'boundary="([^"]+)"', build(message(subject="other", html=None,
                                                             attachments=[])))
    assert other == []
    changed = re.findall(rb'boundary="([^"]+)"', build(message(text="changed")))
    assert changed
    assert changed[0] not in one


def test_boundary_found_in_a_text_part_is_replaced() -> None:
    from mailrelay.message import _boundaries

    msg = message()
    first = _boundaries(msg, [])
    assert _boundaries(msg, []) == first
    second = _boundaries(msg, ["line\n--" + first[1] + "\n"])
    assert second[0] != first[0]
    assert all(b not in "line\n--" + first[1] for b in second)


def test_text_that_looks_like_mime_structure_stays_text() -> None:
    text = "--=_mr_\r\n--=_mr_000000000000000000000000_0--\nContent-Type: text/html\n\n<b>no</b>"
    parsed = parse(build(message(text=text)))
    body = children(parsed)[0].get_content()
    assert body.replace("\r\n", "\n").rstrip("\n") == text.replace("\r\n", "\n")


def test_mime_size_is_exact_for_real_ids_and_dates() -> None:
    for msg in (full_message(), message(html=None), message(text=None, bcc=None)):
        real_id = make_message_id(uuid.uuid4().hex, msg.sender.domain)
        now = datetime.now(timezone(timedelta(hours=5, minutes=30)))
        assert mime_size(msg) == len(build_mime(msg, message_id=real_id, date=now))
        assert mime_size(msg, include_bcc=True) == len(
            build_mime(msg, message_id=real_id, date=now, include_bcc=True))


def test_only_crlf_line_endings_and_no_overlong_lines() -> None:
    data = build(message(text="unix\nlines\n", html="<p>a\nb</p>\n",
                         attachments=[{"filename": "x.bin", "content_type": "application/x",
                                       "content": b64(b"\n\r\n" * 500)}]))
    assert re.search(rb"(?<!\r)\n", data) is None
    assert re.search(rb"\r(?!\n)", data) is None
    assert max(len(line) for line in data.split(b"\r\n")) <= 78


def test_make_message_id() -> None:
    unique = uuid.uuid4().hex
    assert make_message_id(unique, "xn--bcher-kva.example") == f"<{unique}@xn--bcher-kva.example>"
    for bad_unique, domain in (("a b", "example.com"), ("", "example.com"), ("x>", "example.com"),
                               ("x", "Example.com"), ("x", "bücher.example"), ("x", "a\r\nb.com")):
        with pytest.raises(ValueError, match="Message-ID"):
            make_message_id(bad_unique, domain)


def test_build_refuses_bad_message_id_and_naive_date() -> None:
    msg = message()
    with pytest.raises(ValueError, match="message_id"):
        build_mime(msg, message_id="<a@b>\r\nBcc: x@example.com", date=DATE)
    with pytest.raises(ValueError, match="message_id"):
        build_mime(msg, message_id="no-brackets@example.com", date=DATE)
    with pytest.raises(ValueError, match="timezone"):
        build_mime(msg, message_id="<a@example.com>", date=datetime(2026, 1, 1))
