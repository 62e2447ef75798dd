"""validate(): every error code with the field it names, and the normalizations."""

from __future__ import annotations

import base64
import json
from types import MappingProxyType
from typing import Any

import pytest

from mailrelay.errors import ValidationError
from mailrelay.message import Attachment, Mailbox, Message, mime_size, validate


def payload(**changes: Any) -> dict[str, Any]:
    """A small valid message; a change of None removes the key."""
    raw: dict[str, Any] = {
        "from": "sender@example.com",
        "to": ["rcpt@example.com"],
        "subject": "Hello",
        "text": "Hi there",
    }
    for key, value in changes.items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    return raw


def attachment(**changes: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "filename": "report.pdf",
        "content_type": "application/pdf",
        "content": base64.b64encode(b"%PDF-1.7 data").decode(),
    }
    item.update(changes)
    return item


def inline(cid: object = "logo@example", **changes: Any) -> dict[str, Any]:
    return attachment(filename="logo.png", content_type="image/png", cid=cid, **changes)


def rejected(raw: object, **limits: int) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        validate(raw, **limits)
    return info.value


def without(raw: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in raw.items() if k != key}


# --- invalid_message --------------------------------------------------------------------

@pytest.mark.parametrize("raw", [None, [], "a@example.com", 3, b"{}", ("from",)])
def test_a_non_object_is_invalid_message(raw: object) -> None:
    err = rejected(raw)
    assert err.code == "invalid_message"
    assert err.field is None


def test_unknown_top_level_key_is_named() -> None:
    err = rejected(payload(sender="x@example.com"))
    assert (err.code, err.field) == ("invalid_message", "sender")


def _deeply_nested_tuple() -> tuple[Any, ...]:
    nested: tuple[Any, ...] = ()
    for _ in range(100_000):
        nested = (nested,)
    return nested


@pytest.mark.parametrize(
    ("key", "field"),
    [(7, "<int key>"), (10**5000, "<int key>"), (None, "<NoneType key>"),
     (_deeply_nested_tuple(), "<tuple key>"), ("bad\nkey", "'bad\\nkey'"),
     ("k" * 100_000, repr("k" * 40))],
    ids=["int", "huge-int", "none", "nested-tuple", "newline", "long"],
)
def test_junk_top_level_key_is_invalid_message(key: object, field: str) -> None:
    raw: dict[Any, Any] = payload()
    raw[key] = "x"
    err = rejected(raw)
    assert (err.code, err.field) == ("invalid_message", field)


def test_from_is_required() -> None:
    err = rejected(payload(**{"from": None}))
    assert (err.code, err.field) == ("invalid_message", "from")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"from": True}, "from"),
        ({"from": ["a@example.com"]}, "from"),
        ({"to": "rcpt@example.com"}, "to"),
        ({"to": ["rcpt@example.com", True]}, "to[1]"),
        ({"cc": {"a": "b"}}, "cc"),
        ({"bcc": [None]}, "bcc[0]"),
        ({"reply_to": 5}, "reply_to"),
        ({"reply_to": [False]}, "reply_to[0]"),
        ({"subject": True}, "subject"),
        ({"subject": 12}, "subject"),
        ({"text": False}, "text"),
        ({"text": b"bytes"}, "text"),
        ({"html": ["<p>"]}, "html"),
        ({"attachments": {"filename": "x"}}, "attachments"),
        ({"inline": "logo.png"}, "inline"),
        ({"headers": [["X-A", "b"]]}, "headers"),
        ({"idempotency_key": 12}, "idempotency_key"),
        ({"idempotency_key": True}, "idempotency_key"),
        ({"metadata": ["a"]}, "metadata"),
        ({"provider": True}, "provider"),
    ],
)
def test_wrong_field_types_are_invalid_message(changes: dict[str, Any], field: str) -> None:
    err = rejected(payload(**changes))
    assert (err.code, err.field) == ("invalid_message", field)


@pytest.mark.parametrize("text", ["nul\x00inside", "lone \ud800 surrogate"])
def test_bodies_that_cannot_be_encoded_are_invalid_message(text: str) -> None:
    err = rejected(payload(text=text))
    assert (err.code, err.field) == ("invalid_message", "text")


@pytest.mark.parametrize("key", ["", "k" * 201, "tab\there", "naïve", "line\nbreak"])
def test_bad_idempotency_key(key: str) -> None:
    err = rejected(payload(idempotency_key=key))
    assert (err.code, err.field) == ("invalid_message", "idempotency_key")


def test_idempotency_key_limits_are_inclusive() -> None:
    assert validate(payload(idempotency_key="k")).idempotency_key == "k"
    assert validate(payload(idempotency_key="k" * 200)).idempotency_key == "k" * 200


@pytest.mark.parametrize("provider", ["Gmail", "1gmail", "g-mail", "", "g" * 33, "gmail\n"])
def test_bad_provider_name(provider: str) -> None:
    err = rejected(payload(provider=provider))
    assert (err.code, err.field) == ("invalid_message", "provider")


def test_provider_name_shape_is_accepted() -> None:
    assert validate(payload(provider="microsoft_365")).provider == "microsoft_365"
    assert validate(payload(provider="g" * 32)).provider == "g" * 32


@pytest.mark.parametrize(
    "metadata",
    [
        {"big": "x" * 8200},
        {"many": list(range(3000))},
        {"nan": float("nan")},
        {"inf": float("-inf")},
        {"bytes": b"x"},
        {"tuple": (1, 2)},
        {"set": {1}},
        {"nested": {1: "non-string key"}},
        {"huge": 10**5000},
        {"nul": "a\x00b"},
        {"deep": json.loads("[" * 40 + "]" * 40)},
    ],
)
def test_bad_metadata_is_invalid_message(metadata: dict[str, Any]) -> None:
    err = rejected(payload(metadata=metadata))
    assert (err.code, err.field) == ("invalid_message", "metadata")


def test_metadata_size_limit_counts_compact_utf8_json() -> None:
    # {"k":"..."} is 8 bytes of syntax; "é" is two bytes in UTF-8.
    fits = {"k": "é" * 4092}
    assert len(json.dumps(fits, separators=(",", ":"), ensure_ascii=False).encode()) == 8192
    assert validate(payload(metadata=fits)).metadata == fits
    err = rejected(payload(metadata={"k": "é" * 4092 + "x"}))
    assert err.code == "invalid_message"


def test_metadata_is_frozen_deeply_and_round_trips() -> None:
    metadata = {"campaign": "spring", "ids": [1, 2.5, None, True], "nested": {"a": {"b": []}}}
    message = validate(payload(metadata=metadata))
    assert isinstance(message.metadata, MappingProxyType)
    with pytest.raises(TypeError):
        message.metadata["nested"]["a"] = 1
    assert message.to_payload()["metadata"] == metadata
    assert json.loads(json.dumps(message.to_payload()))["metadata"] == metadata
    hash(message)  # the metadata mapping must not make the message unhashable


# --- invalid_address --------------------------------------------------------------------

BAD_ADDRESSES = [
    "plainaddress",
    "two@@example.com",
    "no-domain@",
    "@no-local.example",
    "single@label",
    "dot..dot@example.com",
    ".lead@example.com",
    "trail.@example.com",
    "jörg@example.com",
    "a b@example.com",
    "user@-lead.example",
    "user@trail-.example",
    "user@under_score.example",
    "user@example..com",
    "user@example.com.",
    "user@[192.0.2.1]",
    "user@" + "a" * 64 + ".example",
    "user@" + ".".join(["a" * 60] * 5),
    "l" * 65 + "@example.com",
    "user@example.com\r\nBcc: victim@example.com",
    "user@exa\nmple.com",
    "Jo\r\n <user@example.com>",
    '"Jo\rDoe" <user@example.com>',
    "tab\t<user@example.com>",
    "nul\x00 <user@example.com>",
    "line\u2028sep <user@example.com>",
    "Jo <user@example.com",
    "Jo user@example.com>",
    "Jo <user@example.com> <other@example.com>",
    '"unterminated <user@example.com>',
    '"Jo" trailing <user@example.com>',
    'Jo "JD" Doe <user@example.com>',
    "back\\slash <user@example.com>",
    "<>",
    '""@example.com',
    '"jörg"@example.com',
    "user@xn--bcher-.example",
    "user@bü_cher.example",
    "N" * 999 + " <user@example.com>",
]


@pytest.mark.parametrize("address", BAD_ADDRESSES)
def test_bad_address_is_invalid_address_without_echoing_it(address: str) -> None:
    err = rejected(payload(to=["ok@example.com", "ok2@example.com", "ok3@example.com", address]))
    assert (err.code, err.field) == ("invalid_address", "to[3]")
    assert "example" not in str(err)  # details go to logs: the address is personal data


@pytest.mark.parametrize("field", ["from", "cc", "bcc", "reply_to"])
def test_invalid_address_names_each_address_field(field: str) -> None:
    value = "nope" if field in ("from", "reply_to") else ["nope"]
    err = rejected(payload(**{field: value}))
    expected = field if field in ("from", "reply_to") else f"{field}[0]"
    assert (err.code, err.field) == ("invalid_address", expected)


def test_address_of_320_characters_is_the_limit() -> None:
    domain = ".".join(["d" * 63] * 3) + "." + "e" * 61  # 253 characters
    longest = "l" * 64 + "@" + domain
    assert len(longest) == 318
    assert validate(payload(to=[longest])).to[0].address == longest
    err = rejected(payload(to=["l" * 64 + "@" + domain + "x"]))
    assert err.code == "invalid_address"


@pytest.mark.parametrize(
    ("text", "name", "address"),
    [
        ('"Doe, Jo" <jo@example.com>', "Doe, Jo", "jo@example.com"),
        ('"Jo \\"JD\\" Doe" <jo@example.com>', 'Jo "JD" Doe', "jo@example.com"),
        ('"back\\\\slash" <jo@example.com>', "back\\slash", "jo@example.com"),
        ("Doe, Jo <jo@example.com>", "Doe, Jo", "jo@example.com"),
        ("  Jo    Doe   <jo@example.com>  ", "Jo Doe", "jo@example.com"),
        ('"  spaced  " <jo@example.com>', "  spaced  ", "jo@example.com"),
        ("<jo@example.com>", "", "jo@example.com"),
        ('""<jo@example.com>', "", "jo@example.com"),
        ("Jörg Müller <jo@example.com>", "Jörg Müller", "jo@example.com"),
        ('"李小龍" <jo@example.com>', "李小龍", "jo@example.com"),
        ("Jo.Doe@EXAMPLE.COM", "", "Jo.Doe@example.com"),
        ("jo@Bücher.Example", "", "jo@xn--bcher-kva.example"),
        ("jo@例え.テスト", "", "jo@xn--r8jz45g.xn--zckzah"),
        ("jo@xn--bcher-kva.example", "", "jo@xn--bcher-kva.example"),
        ('"jo"@example.com', "", "jo@example.com"),
        ('"jo doe"@example.com', "", '"jo doe"@example.com'),
        ('"john..doe"@example.com', "", '"john..doe"@example.com'),
        ('"a\\"b"@example.com', "", '"a\\"b"@example.com'),
        ("o'brien+tag@example.com", "", "o'brien+tag@example.com"),
        ("jo@ab--cd.example", "", "jo@ab--cd.example"),
    ],
)
def test_address_forms_are_normalized(text: str, name: str, address: str) -> None:
    mailbox = validate(payload(to=[text])).to[0]
    assert mailbox == Mailbox(address, name)


def test_domain_property_is_the_normalized_domain() -> None:
    message = validate(payload(**{"from": "Jo <Jo.Doe@Bücher.Example>"}))
    assert message.sender.address == "Jo.Doe@xn--bcher-kva.example"
    assert message.sender.domain == "xn--bcher-kva.example"


def test_formatted_mailbox_is_ascii_and_encodes_unicode_names() -> None:
    assert Mailbox("jo@example.com").formatted() == "jo@example.com"
    assert Mailbox("jo@example.com", "Jo Doe").formatted() == "Jo Doe <jo@example.com>"
    assert Mailbox("jo@example.com", "Doe, Jo").formatted() == '"Doe, Jo" <jo@example.com>'
    assert Mailbox("jo@example.com", 'a "b"').formatted() == '"a \\"b\\"" <jo@example.com>'
    encoded = Mailbox("jo@example.com", "Jörg").formatted()
    assert encoded == "=?utf-8?b?SsO2cmc=?= <jo@example.com>"
    # Text shaped like an encoded word would be decoded by readers, so it is encoded too.
    assert Mailbox("jo@example.com", "=?utf-8?q?x?=").formatted().startswith("=?utf-8?b?")


# --- recipients ---------------------------------------------------------------------------

def test_missing_recipient_when_no_list_has_one() -> None:
    for raw in (payload(to=None), payload(to=[]), payload(to=[], cc=[], bcc=[])):
        assert rejected(raw).code == "missing_recipient"


def test_only_bcc_is_enough() -> None:
    message = validate(payload(to=None, bcc=["hidden@example.com"]))
    assert message.to == ()
    assert [m.address for m in message.recipients] == ["hidden@example.com"]


def test_duplicate_recipients_are_kept_once_first_occurrence_wins() -> None:
    message = validate(payload(
        to=["Ann <ann@example.com>", "bob@example.com", "ANN@Example.com"],
        cc=["Other Ann <ann@EXAMPLE.com>", "carl@example.com", "Bob@example.com"],
        bcc=["carl@example.com", "dora@example.com"],
    ))
    assert message.to == (Mailbox("ann@example.com", "Ann"), Mailbox("bob@example.com"))
    assert message.cc == (Mailbox("carl@example.com"),)
    assert message.bcc == (Mailbox("dora@example.com"),)
    assert len(message.recipients) == 4


def test_too_many_recipients_counts_after_deduplication() -> None:
    raw = payload(to=["a@example.com", "b@example.com"], cc=["A@example.com"], bcc=["c@example.com"])
    assert len(validate(raw, max_recipients=3).recipients) == 3
    err = rejected(raw, max_recipients=2)
    assert err.code == "too_many_recipients"


def test_reply_to_takes_a_string_or_a_list() -> None:
    assert validate(payload(reply_to="r@example.com")).reply_to == (Mailbox("r@example.com"),)
    both = validate(payload(reply_to=["r@example.com", "Q <q@example.com>"])).reply_to
    assert both == (Mailbox("r@example.com"), Mailbox("q@example.com", "Q"))


# --- body -------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "raw",
    [payload(text=None), payload(text=""), payload(text="", html=""),
     dict(payload(), text=None, html=None)],
)
def test_missing_body(raw: dict[str, Any]) -> None:
    assert rejected(raw).code == "missing_body"


def test_an_empty_body_alternative_is_dropped() -> None:
    message = validate(payload(text="", html="<p>Hi</p>"))
    assert (message.text, message.html) == (None, "<p>Hi</p>")


def test_explicit_nulls_mean_absent() -> None:
    raw = payload(html="<p>x</p>")
    raw.update(cc=None, subject=None, text=None, headers=None, metadata=None, provider=None)
    message = validate(raw)
    assert (message.cc, message.subject, message.text, message.provider) == ((), "", None, None)


# --- invalid_header -------------------------------------------------------------------------

@pytest.mark.parametrize(
    "subject", ["two\r\nlines", "lf\nonly", "cr\ronly", "nul\x00", "tab\tbed", "sep\u2028", "x" * 999],
)
def test_bad_subject_is_invalid_header(subject: str) -> None:
    err = rejected(payload(subject=subject))
    assert (err.code, err.field) == ("invalid_header", "subject")


def test_subject_of_998_characters_is_accepted() -> None:
    assert len(validate(payload(subject="s" * 998)).subject) == 998


@pytest.mark.parametrize(
    "name",
    ["From", "to", "CC", "bcc", "Reply-To", "SUBJECT", "date", "Message-Id", "mime-version",
     "Sender", "return-path", "RECEIVED", "Content-Type", "content-transfer-encoding",
     "Content-Anything"],
)
def test_reserved_header_names_are_refused_case_insensitively(name: str) -> None:
    err = rejected(payload(headers={name: "x"}))
    assert (err.code, err.field) == ("invalid_header", f"headers.{name}")


@pytest.mark.parametrize(
    ("name", "field"),
    [("X:Colon", "headers[0]"), ("X Space", "headers[0]"), ("", "headers[0]"),
     ("X" * 77, "headers[0]"), ("Xé", "headers[0]"), ("X-\x7f", "headers[0]")],
)
def test_bad_header_names(name: str, field: str) -> None:
    err = rejected(payload(headers={name: "value"}))
    assert (err.code, err.field) == ("invalid_header", field)


@pytest.mark.parametrize(
    "value", ["a\r\nBcc: victim@example.com", "lf\n", "cr\r", "naïve", "tab\t", "\x00", None, 5],
)
def test_bad_header_values(value: object) -> None:
    err = rejected(payload(headers={"X-Campaign": value}))
    assert (err.code, err.field) == ("invalid_header", "headers.X-Campaign")


def test_header_line_must_fit_998_characters() -> None:
    assert validate(payload(headers={"X-A": "v" * 993})).headers == (("X-A", "v" * 993),)
    assert rejected(payload(headers={"X-A": "v" * 994})).code == "invalid_header"


def test_header_names_keep_their_case_and_order() -> None:
    headers = {"x-lower": "1", "X-Upper": "2", "List-Unsubscribe": "<mailto:u@example.com>"}
    message = validate(payload(headers=headers))
    assert message.headers == tuple(headers.items())


def test_header_names_differing_only_in_case_are_refused() -> None:
    err = rejected(payload(headers={"X-A": "1", "x-a": "2"}))
    assert (err.code, err.field) == ("invalid_header", "headers.x-a")


# --- invalid_attachment -----------------------------------------------------------------------

@pytest.mark.parametrize(
    ("item", "field"),
    [
        (attachment(content="!!!!"), "attachments[1].content"),
        (attachment(content="QQ"), "attachments[1].content"),
        (attachment(content="QQ=="[:3]), "attachments[1].content"),
        (attachment(content="QUJD\nREVG"), "attachments[1].content"),
        (attachment(content="QU JD"), "attachments[1].content"),
        (attachment(content="QUJD-_=="), "attachments[1].content"),
        (attachment(content="ÄÖÜ="), "attachments[1].content"),
        (attachment(content=b"QUJD"), "attachments[1].content"),
        (attachment(content=None), "attachments[1].content"),
        (without(attachment(), "content"), "attachments[1].content"),
        (without(attachment(), "filename"), "attachments[1].filename"),
        (without(attachment(), "content_type"), "attachments[1].content_type"),
        (attachment(extra=1), "attachments[1].extra"),
        (attachment(cid="c"), "attachments[1].cid"),
        (attachment(filename=""), "attachments[1].filename"),
        (attachment(filename="   "), "attachments[1].filename"),
        (attachment(filename=".."), "attachments[1].filename"),
        (attachment(filename="../etc/passwd"), "attachments[1].filename"),
        (attachment(filename="C:\\x.txt"), "attachments[1].filename"),
        (attachment(filename="new\nline.txt"), "attachments[1].filename"),
        (attachment(filename="f" * 256), "attachments[1].filename"),
        (attachment(filename=True), "attachments[1].filename"),
        (attachment(content_type="pdf"), "attachments[1].content_type"),
        (attachment(content_type="text/plain; charset=utf-8"), "attachments[1].content_type"),
        (attachment(content_type="image/png\r\nX-Evil: 1"), "attachments[1].content_type"),
        (attachment(content_type="multipart/mixed"), "attachments[1].content_type"),
        (attachment(content_type="message/rfc822"), "attachments[1].content_type"),
        ("report.pdf", "attachments[1]"),
        (None, "attachments[1]"),
    ],
)
def test_bad_attachment(item: object, field: str) -> None:
    err = rejected(payload(attachments=[attachment(), item]))
    assert (err.code, err.field) == ("invalid_attachment", field)


def test_inline_part_needs_a_cid() -> None:
    item = without(inline(), "cid")
    err = rejected(payload(inline=[item]))
    assert (err.code, err.field) == ("invalid_attachment", "inline[0].cid")


@pytest.mark.parametrize("cid", ["", "with space", "<logo@example>", "a>b", "é@example", "c" * 201, 5])
def test_bad_cid(cid: object) -> None:
    err = rejected(payload(inline=[inline(cid=cid)]))
    assert (err.code, err.field) == ("invalid_attachment", "inline[0].cid")


def test_duplicate_cid_is_refused() -> None:
    err = rejected(payload(inline=[inline("logo@example"), inline("LOGO@example")]))
    assert (err.code, err.field) == ("invalid_attachment", "inline[1].cid")


def test_attachments_are_decoded_and_normalized() -> None:
    message = validate(payload(
        attachments=[attachment(filename="  Résumé final.pdf ", content_type="Application/PDF")],
        inline=[inline("logo"), inline("c" * 200, content="")],
    ))
    assert message.attachments == (
        Attachment("Résumé final.pdf", "application/pdf", b"%PDF-1.7 data"),
    )
    assert [part.cid for part in message.inline] == ["logo", "c" * 200]
    assert message.inline[1].content == b""


# --- message_too_large --------------------------------------------------------------------------

def test_message_too_large() -> None:
    raw = payload(attachments=[attachment(content=base64.b64encode(bytes(3000)).decode())])
    assert validate(raw, max_message_bytes=10_000).attachments
    assert rejected(raw, max_message_bytes=4_000).code == "message_too_large"


def test_size_limit_counts_the_bcc_header_some_providers_send() -> None:
    raw = payload(bcc=[f"hidden{i}@example.com" for i in range(20)])
    message = validate(raw)
    with_bcc = mime_size(message, include_bcc=True)
    assert with_bcc > mime_size(message)
    assert validate(raw, max_message_bytes=with_bcc) == message
    assert rejected(raw, max_message_bytes=with_bcc - 1).code == "message_too_large"


# --- to_payload and content_hash ---------------------------------------------------------------

def full_payload() -> dict[str, Any]:
    return payload(
        **{"from": '"Jörg Müller, Sr." <Jo.Doe@Bücher.Example>'},
        to=["a@example.com", "Bob <b@example.com>"],
        cc=['"Doe, Jo" <jo@example.org>'],
        bcc=["hidden@example.net"],
        reply_to="Replies <replies@example.com>",
        subject="Grüße",
        html="<p>Hi</p>",
        attachments=[attachment()],
        inline=[inline()],
        headers={"X-Campaign": "spring", "List-Unsubscribe": "<https://example.com/u?t=1>"},
        idempotency_key="order-42",
        metadata={"order": 42, "tags": ["a", "b"]},
        provider="gmail",
    )


def test_to_payload_round_trips_and_is_json() -> None:
    message = validate(full_payload())
    again = validate(json.loads(json.dumps(message.to_payload())))
    assert again == message
    assert isinstance(message, Message)
    assert message.to_payload()["from"] == '"Jörg Müller, Sr." <Jo.Doe@xn--bcher-kva.example>'


def test_content_hash_ignores_idempotency_key_and_metadata() -> None:
    base = validate(full_payload()).content_hash()
    assert len(base) == 64
    assert int(base, 16) >= 0
    other_key = validate(dict(full_payload(), idempotency_key="other", metadata={"x": 1}))
    assert other_key.content_hash() == base
    no_extras = full_payload()
    del no_extras["idempotency_key"], no_extras["metadata"]
    assert validate(no_extras).content_hash() == base


@pytest.mark.parametrize(
    "changes",
    [{"subject": "Grüsse"}, {"text": "Hi there!"}, {"to": ["a@example.com"]},
     {"headers": {"X-Campaign": "autumn"}}, {"provider": "microsoft"}],
)
def test_content_hash_changes_with_content(changes: dict[str, Any]) -> None:
    base = validate(full_payload()).content_hash()
    assert validate(dict(full_payload(), **changes)).content_hash() != base


def test_content_hash_is_the_same_for_equivalent_spellings() -> None:
    one = validate(payload(to=["Jo <JO@EXAMPLE.COM>"], subject="s"))
    two = validate(payload(to=['"Jo"   <JO@example.com>'], subject="s", metadata={}))
    assert one == two
    assert one.content_hash() == two.content_hash()
