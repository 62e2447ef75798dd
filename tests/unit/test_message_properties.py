"""Properties of validate() and build_mime() over generated input."""

from __future__ import annotations

import base64
import email
import email.header
import email.policy
import email.utils
import json
import re
import string
import uuid
from datetime import UTC, datetime
from email.message import EmailMessage
from email.message import Message as ParsedMessage
from typing import Any

import idna
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailrelay.errors import CODES, ValidationError
from mailrelay.message import Message, build_mime, make_message_id, mime_size, validate

FIELDS = ["from", "to", "cc", "bcc", "reply_to", "subject", "text", "html", "attachments",
          "inline", "headers", "idempotency_key", "metadata", "provider"]

# Text that may appear in headers: no controls, line separators or lone surrogates.
header_chars = st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp"))
# Bodies: anything encodable except NUL and a bare CR (the email package turns a bare CR
# into a line break, so it cannot come back as it went in).
body_text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00\r"),
                    max_size=300)

json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)
# Metadata strings must be storable as JSON text: no NUL, no lone surrogate.
storable_text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
                        max_size=20)
metadata_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | storable_text,
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(storable_text, children, max_size=3),
    max_leaves=10,
)
junk = json_like | st.binary(max_size=10) | st.dictionaries(st.integers(), json_like, max_size=3)

# --- valid messages ------------------------------------------------------------------------

# Hyphens in the 3rd and 4th places are reserved for A-labels ("xn--"): IDNA 2008 refuses
# such a label in a domain that also has a Unicode label, so the generator leaves them out.
ascii_label = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,8}[A-Za-z0-9])?", fullmatch=True).filter(
    lambda label: label[2:4] != "--")
unicode_label = st.text(alphabet="abcdefghijklmnopqrstuvwxyzäöüéèçñßåøłżæ", min_size=1, max_size=10)


def _encodes(label: str) -> bool:
    try:
        idna.encode(label, uts46=True)
    except idna.IDNAError:
        return False
    return True


domains = st.lists(ascii_label | unicode_label.filter(_encodes), min_size=1, max_size=3).map(
    lambda labels: ".".join([*labels, "example"]))
DOT_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
dot_atoms = st.from_regex(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,10}(\.[A-Za-z0-9_-]{1,8}){0,2}",
                          fullmatch=True)
quoted_contents = st.text(string.ascii_letters + ' ."\\@,', min_size=1, max_size=12)
display_names = st.one_of(
    st.just(""),
    st.text(string.ascii_letters + " ,.'\"\\()@<>;:=?", max_size=30),
    st.text(header_chars, max_size=80),
)


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _expected_domain(domain: str) -> str:
    return idna.encode(domain, uts46=True).decode() if not domain.isascii() else domain.lower()


@st.composite
def mailboxes(draw: st.DrawFn) -> tuple[str, tuple[str, str]]:
    """An address string for the producer and the (name, address) it must come back as."""
    domain, name = draw(domains), draw(display_names)
    if draw(st.integers(0, 4)):
        local = expected_local = draw(dot_atoms)
    else:
        content = draw(quoted_contents)
        local = _quoted(content)
        expected_local = content if re.fullmatch(DOT_ATOM, content) else local
    address = f"{local}@{domain}"
    text = f"{_quoted(name)} <{address}>" if name else address
    return text, (name, f"{expected_local}@{_expected_domain(domain)}")


filenames = st.text(st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp"),
                                  exclude_characters="/\\"), min_size=1, max_size=60).filter(
    lambda name: name.strip() not in ("", ".", ".."))
content_types = st.sampled_from(["application/pdf", "image/png", "text/plain", "text/csv",
                                 "application/octet-stream", "image/svg+xml", "audio/mpeg"])
cids = st.from_regex(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,30}(@[A-Za-z0-9.-]{1,20})?", fullmatch=True)
header_names = st.from_regex(r"X-[A-Za-z0-9-]{1,20}", fullmatch=True)
header_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=120)


@st.composite
def attachment_dicts(draw: st.DrawFn, cid: str | None = None) -> dict[str, Any]:
    item = {
        "filename": draw(filenames),
        "content_type": draw(content_types),
        "content": base64.b64encode(draw(st.binary(max_size=300))).decode(),
    }
    if cid is not None:
        item["cid"] = cid
    return item


Expected = dict[str, list[tuple[str, str]]]


@st.composite
def valid_payloads(draw: st.DrawFn) -> tuple[dict[str, Any], Expected]:
    """A valid producer dict, and the (name, address) pairs each address field must hold."""
    sender = draw(mailboxes())
    raw: dict[str, Any] = {"from": sender[0]}
    expected: Expected = {"from": [sender[1]], "reply_to": []}
    lists = draw(st.lists(st.lists(mailboxes(), max_size=3), min_size=3, max_size=3).filter(
        lambda groups: any(groups)))
    seen: set[str] = set()
    for key, group in zip(("to", "cc", "bcc"), lists, strict=True):
        if bool(group) or draw(st.booleans()):
            raw[key] = [text for text, _ in group]
        expected[key] = []
        for _, (name, address) in group:
            if address.lower() not in seen:
                seen.add(address.lower())
                expected[key].append((name, address))
    if draw(st.booleans()):
        reply_to = draw(st.lists(mailboxes(), max_size=2))
        raw["reply_to"] = [text for text, _ in reply_to]
        expected["reply_to"] = [pair for _, pair in reply_to]
    if draw(st.booleans()):
        raw["subject"] = draw(st.text(header_chars, max_size=200))
    text, html = draw(st.tuples(body_text, body_text).filter(lambda pair: any(pair)))
    for key, value in (("text", text), ("html", html)):
        if value or draw(st.booleans()):
            raw[key] = value
    if draw(st.booleans()):
        raw["attachments"] = draw(st.lists(attachment_dicts(), max_size=3))
    if draw(st.booleans()):
        unique = draw(st.lists(cids, max_size=3, unique_by=str.lower))
        raw["inline"] = [draw(attachment_dicts(cid)) for cid in unique]
    if draw(st.booleans()):
        raw["headers"] = draw(st.dictionaries(header_names, header_values, max_size=3).filter(
            lambda headers: len({name.lower() for name in headers}) == len(headers)))
    if draw(st.booleans()):
        raw["idempotency_key"] = draw(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E),
                                              min_size=1, max_size=200))
    if draw(st.booleans()):
        raw["metadata"] = draw(st.dictionaries(storable_text, metadata_values, max_size=4))
    if draw(st.booleans()):
        raw["provider"] = draw(st.from_regex(r"[a-z][a-z0-9_]{0,31}", fullmatch=True))
    return raw, expected


# --- near-valid input: a valid payload with parts dropped, replaced or added ---------------

@st.composite
def mutated(draw: st.DrawFn, value: Any, depth: int = 0) -> Any:
    if depth > 0 and draw(st.integers(0, 3)) == 0:
        return draw(junk)
    if isinstance(value, dict) and value:
        value = dict(value)
        key = draw(st.sampled_from(sorted(value, key=str)))
        action = draw(st.sampled_from(["drop", "recurse", "recurse", "add"]))
        if action == "drop":
            del value[key]
        elif action == "add":
            value[draw(st.text(max_size=8) | st.sampled_from(FIELDS))] = draw(junk)
        else:
            value[key] = draw(mutated(value[key], depth + 1))
        return value
    if isinstance(value, list) and value:
        value = list(value)
        index = draw(st.integers(0, len(value) - 1))
        value[index] = draw(mutated(value[index], depth + 1))
        return value
    if isinstance(value, str) and value and draw(st.booleans()):
        position = draw(st.integers(0, len(value)))
        inserted = draw(st.sampled_from(["\r\n", "\x00", "@", "<", '"', "\\", "é", "\ud800", " ", "=="]))
        return value[:position] + inserted + value[position:]
    return draw(junk)


near_valid = valid_payloads().flatmap(lambda pair: mutated(pair[0]))


def _check_outcome(raw: object) -> Message | None:
    try:
        message = validate(raw)
    except ValidationError as err:
        error: ValidationError | None = err
    else:
        error = None
    if error is not None:
        assert error.code in CODES
        assert str(error)
        return None
    assert isinstance(message, Message)
    assert validate(json.loads(json.dumps(message.to_payload()))) == message
    return message


@settings(max_examples=150, deadline=None)
@given(junk | st.dictionaries(st.sampled_from(FIELDS), junk, max_size=6))
def test_any_json_like_input_validates_or_raises_validation_error(raw: object) -> None:
    _check_outcome(raw)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(near_valid)
def test_near_valid_input_validates_or_raises_validation_error(raw: object) -> None:
    _check_outcome(raw)


# --- valid messages build MIME that parses back to the same message -------------------------

def _unfolded(value: str) -> str:
    return re.sub(r"\r?\n(?=[ \t])", "", value)


def _mailboxes_in(legacy: ParsedMessage, name: str) -> list[tuple[str, str]]:
    """Mailboxes decoded with the legacy parser: the modern one keeps the folding space
    between two encoded words of one display name, which RFC 2047 says to drop."""
    values = [_unfolded(v) for v in legacy.get_all(name, [])]
    return [(str(email.header.make_header(email.header.decode_header(n))), a)
            for n, a in email.utils.getaddresses(values)]


def _normalized(text: str) -> str:
    return text.replace("\r\n", "\n").rstrip("\n")


def _leaves(parsed: EmailMessage) -> list[EmailMessage]:
    return [part for part in parsed.walk() if not part.is_multipart()]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_payloads())
def test_valid_messages_build_mime_that_parses_back(case: tuple[dict[str, Any], Expected]) -> None:
    raw, expected = case
    message = validate(raw)
    for key, group in (("from", (message.sender,)), ("to", message.to), ("cc", message.cc),
                       ("bcc", message.bcc), ("reply_to", message.reply_to)):
        assert [(m.name, m.address) for m in group] == expected[key]

    message_id = make_message_id(uuid.uuid4().hex, message.sender.domain)
    data = build_mime(message, message_id=message_id, date=datetime.now(UTC), include_bcc=True)
    assert re.search(rb"\r(?!\n)|(?<!\r)\n", data) is None
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    assert mime_size(message, include_bcc=True) == len(data)

    parsed = email.message_from_bytes(data, policy=email.policy.default)
    legacy = email.message_from_bytes(data, policy=email.policy.compat32)
    assert isinstance(parsed, EmailMessage)
    assert parsed["Subject"] == message.subject
    assert parsed["Message-ID"] == message_id
    for header, key in (("From", "from"), ("To", "to"), ("Cc", "cc"), ("Bcc", "bcc"),
                        ("Reply-To", "reply_to")):
        assert _mailboxes_in(legacy, header) == expected[key]
    for name, value in message.headers:
        # Readers drop the whitespace after the colon; the rest comes back as sent.
        assert _unfolded(legacy[name]) == value.lstrip(" ")

    bodies = {p.get_content_type(): p.get_content() for p in _leaves(parsed)
              if p.get_content_disposition() is None}
    assert set(bodies) == {t for t, body in (("text/plain", message.text),
                                              ("text/html", message.html)) if body is not None}
    if message.text is not None:
        assert _normalized(bodies["text/plain"]) == _normalized(message.text)
    if message.html is not None:
        assert _normalized(bodies["text/html"]) == _normalized(message.html)

    def parts(disposition: str) -> list[tuple[str | None, str, object, str | None]]:
        return [(p.get_filename(), p.get_content_type(), p.get_payload(decode=True),
                 p["Content-ID"]) for p in _leaves(parsed)
                if p.get_content_disposition() == disposition]

    assert parts("attachment") == [(a.filename, a.content_type, a.content, None)
                                   for a in message.attachments]
    assert parts("inline") == [(a.filename, a.content_type, a.content, f"<{a.cid}>")
                               for a in message.inline]
    expected_root = ("multipart/mixed" if message.attachments else
                     "multipart/related" if message.inline else
                     "multipart/alternative" if message.text and message.html else
                     "text/plain" if message.text else "text/html")
    assert parsed.get_content_type() == expected_root
