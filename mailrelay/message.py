"""The message model: the producer's dict becomes a frozen Message, then RFC 5322 bytes.

``validate`` is the only door into the system, so it must turn every input, however
malformed, into either a Message or a ValidationError with a stable code.
``build_mime`` is deterministic: the same Message, Message-ID and date always give the
same bytes, which lets a retried send be compared with the first attempt.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage, MIMEPart
from email.policy import SMTP, Policy
from email.utils import format_datetime
from types import MappingProxyType
from typing import Any, TypeVar

from mailrelay.addressing import (
    Mailbox,
    address_list_tokens,
    display_form,
    disposition_lines,
    fold,
    has_forbidden_chars,
    is_hostname,
    parse_mailbox,
    unstructured_tokens,
)
from mailrelay.errors import ValidationError
from mailrelay.outcome_target import Target
from mailrelay.outcome_target import parse as parse_target

__all__ = [
    "Attachment",
    "Mailbox",
    "Message",
    "build_mime",
    "make_message_id",
    "mime_size",
    "parse_mailbox",
    "validate",
]

DEFAULT_MAX_MESSAGE_BYTES = 36 * 1024 * 1024
DEFAULT_MAX_RECIPIENTS = 500
MAX_HEADER_LINE = 998  # RFC 5322's hard limit for a line, CRLF excluded
MAX_HEADER_NAME = 76
MAX_FILENAME = 255
MAX_CID = 200
MAX_CONTENT_TYPE = 255
MAX_IDEMPOTENCY_KEY = 200
MAX_METADATA_BYTES = 8192
MAX_METADATA_DEPTH = 32

_FIELDS = frozenset({
    "from", "to", "cc", "bcc", "reply_to", "subject", "text", "html", "attachments",
    "inline", "headers", "idempotency_key", "metadata", "provider", "notify",
})
_ATTACHMENT_KEYS = ("filename", "content_type", "content")
_RESERVED_HEADERS = frozenset({
    "from", "to", "cc", "bcc", "reply-to", "subject", "date", "message-id", "mime-version",
    "sender", "return-path", "received",
})
_HEADER_NAME = re.compile(rf"[\x21-\x39\x3b-\x7e]{{1,{MAX_HEADER_NAME}}}")
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")
_CID = re.compile(rf"[\x21-\x3b\x3d\x3f-\x7e]{{1,{MAX_CID}}}")
_MIME_WORD = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"  # an RFC 2045 "token"
_CONTENT_TYPE = re.compile(f"({_MIME_WORD})/({_MIME_WORD})")
_PROVIDER = re.compile(r"[a-z][a-z0-9_]{0,31}")
_MESSAGE_ID = re.compile(r"<[\x21-\x3b\x3d\x3f-\x7e]+@[\x21-\x3b\x3d\x3f-\x7e]+>")
_DOT_ATOM_TEXT = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+(?:\.[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+)*")

# SMTP's CRLF and line length, but 7bit transfer encodings only: a body in 8bit is not
# accepted by every relay on the way, and quoted-printable or base64 costs little.
_POLICY = SMTP.clone(cte_type="7bit")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_NUL_OR_SURROGATE = re.compile(r"[\x00\ud800-\udfff]")
# Python refuses to turn longer ints into text (sys.int_info.default_max_str_digits).
_MAX_INT_BITS = 14_000

_T = TypeVar("_T")


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    content: bytes
    cid: str | None = None  # set for inline parts


@dataclass(frozen=True)
class Message:
    sender: Mailbox
    to: tuple[Mailbox, ...]
    cc: tuple[Mailbox, ...] = ()
    bcc: tuple[Mailbox, ...] = ()
    reply_to: tuple[Mailbox, ...] = ()
    subject: str = ""
    text: str | None = None
    html: str | None = None
    attachments: tuple[Attachment, ...] = ()
    inline: tuple[Attachment, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    idempotency_key: str | None = None
    # Left out of hash(): a mapping proxy is unhashable and would make Message so.
    metadata: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    provider: str | None = None
    # Where the producer wants to hear how the message ended (not content, not part of
    # the payload or its hash: the outbox keeps it in a column of its own).
    notify: Target | None = None

    @property
    def recipients(self) -> tuple[Mailbox, ...]:
        return _dedupe(self.to + self.cc + self.bcc, set())

    def to_payload(self) -> dict[str, Any]:
        return {
            "from": display_form(self.sender),
            "to": [display_form(m) for m in self.to],
            "cc": [display_form(m) for m in self.cc],
            "bcc": [display_form(m) for m in self.bcc],
            "reply_to": [display_form(m) for m in self.reply_to],
            "subject": self.subject,
            "text": self.text,
            "html": self.html,
            "attachments": [_attachment_payload(a) for a in self.attachments],
            "inline": [_attachment_payload(a) for a in self.inline],
            "headers": dict(self.headers),
            "idempotency_key": self.idempotency_key,
            "metadata": _thaw(self.metadata),
            "provider": self.provider,
        }

    def content_hash(self) -> str:
        payload = self.to_payload()
        del payload["idempotency_key"], payload["metadata"]
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def _attachment_payload(attachment: Attachment) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "filename": attachment.filename,
        "content_type": attachment.content_type,
        "content": base64.b64encode(attachment.content).decode("ascii"),
    }
    if attachment.cid is not None:
        payload["cid"] = attachment.cid
    return payload


def _thaw(value: object) -> Any:
    if isinstance(value, Mapping):
        return {key: _thaw(item) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return [_thaw(item) for item in value]
    return value


def _dedupe(mailboxes: Sequence[Mailbox], seen: set[str]) -> tuple[Mailbox, ...]:
    """Keep the first mailbox per address; ``seen`` carries over between to, cc and bcc."""
    kept = []
    for mailbox in mailboxes:
        key = mailbox.address.lower()
        if key not in seen:
            seen.add(key)
            kept.append(mailbox)
    return tuple(kept)


# --- validation -----------------------------------------------------------------------

def validate(
    raw: object,
    *,
    max_message_bytes: int | None = DEFAULT_MAX_MESSAGE_BYTES,
    max_recipients: int = DEFAULT_MAX_RECIPIENTS,
) -> Message:
    """Turn ``raw`` into a Message or raise ValidationError; nothing else escapes.

    ``max_message_bytes=None`` skips the size check (and the MIME build it needs): for
    re-reading a payload that was measured at intake.
    """
    if not isinstance(raw, dict):
        raise ValidationError("invalid_message", "the message must be a JSON object")
    for key in raw:
        if not isinstance(key, str) or key not in _FIELDS:
            raise ValidationError("invalid_message", "unknown field", field=_describe(key))

    sender_text = raw.get("from")
    if sender_text is None:
        raise ValidationError("invalid_message", "is required", field="from")
    seen: set[str] = set()
    message = Message(
        sender=parse_mailbox(_expect(sender_text, str, "from", "a string"), "from"),
        to=_dedupe(_mailbox_list(raw, "to"), seen),
        cc=_dedupe(_mailbox_list(raw, "cc"), seen),
        bcc=_dedupe(_mailbox_list(raw, "bcc"), seen),
        reply_to=_reply_to(raw.get("reply_to")),
        subject=_subject(raw.get("subject")),
        text=_body(raw, "text"),
        html=_body(raw, "html"),
        attachments=_attachments(raw, "attachments"),
        inline=_attachments(raw, "inline"),
        headers=_headers(raw.get("headers")),
        idempotency_key=_idempotency_key(raw.get("idempotency_key")),
        metadata=_metadata(raw.get("metadata")),
        provider=_provider(raw.get("provider")),
        notify=parse_target(raw["notify"]) if raw.get("notify") is not None else None,
    )
    if not seen:
        raise ValidationError("missing_recipient", "no recipient in to, cc or bcc")
    if message.text is None and message.html is None:
        raise ValidationError("missing_body", "text or html must be a non-empty string")
    if len(seen) > max_recipients:
        raise ValidationError(
            "too_many_recipients", f"{len(seen)} recipients, at most {max_recipients} allowed")
    if max_message_bytes is not None:
        _check_size(message, max_message_bytes)
    return message


def _check_size(message: Message, limit: int) -> None:
    # Base64 alone is a lower bound on the size; past the limit it spares the build.
    encoded = sum(4 * math.ceil(len(a.content) / 3) for a in message.attachments + message.inline)
    # The Gmail API sends Bcc inside the message, so the larger form is the one checked.
    if encoded > limit or mime_size(message, include_bcc=True) > limit:
        raise ValidationError("message_too_large", f"the message is larger than {limit} bytes")


def _describe(key: object) -> str:
    """A field name fit for a log line, whatever junk the producer sent as a key."""
    if not isinstance(key, str):
        # Not repr(): that of a huge int or a deeply nested tuple raises.
        return f"<{type(key).__name__} key>"
    if _PRINTABLE_ASCII.fullmatch(key) and len(key) <= 64:
        return key
    return repr(key[:40])


def _expect(value: object, kind: type[_T], name: str, what: str, code: str = "invalid_message") -> _T:
    # bool is an int, and True must not pass as one; no field here takes a bool.
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValidationError(code, f"must be {what}", field=name)
    return value


def _mailbox_list(raw: dict[Any, Any], name: str) -> list[Mailbox]:
    items = raw.get(name)
    if items is None:
        return []
    _expect(items, list, name, "a list of address strings")
    return [
        parse_mailbox(_expect(item, str, f"{name}[{i}]", "an address string"), f"{name}[{i}]")
        for i, item in enumerate(items)
    ]


def _reply_to(value: object) -> tuple[Mailbox, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (parse_mailbox(value, "reply_to"),)
    return tuple(_mailbox_list({"reply_to": value}, "reply_to"))


def _subject(value: object) -> str:
    if value is None:
        return ""
    subject = _expect(value, str, "subject", "a string")
    if has_forbidden_chars(subject):
        raise ValidationError("invalid_header", "contains a control character or line break",
                              field="subject")
    if len(subject) > MAX_HEADER_LINE:
        raise ValidationError("invalid_header", "is longer than 998 characters", field="subject")
    return subject


def _body(raw: dict[Any, Any], name: str) -> str | None:
    value = raw.get(name)
    if value is None:
        return None
    body = _expect(value, str, name, "a string")
    # NUL may not appear in a message body (RFC 5322) and lone surrogates cannot be UTF-8.
    if "\x00" in body or _SURROGATE.search(body):
        raise ValidationError("invalid_message", "contains NUL or an unpaired surrogate", field=name)
    return body or None


def _attachments(raw: dict[Any, Any], name: str) -> tuple[Attachment, ...]:
    items = raw.get(name)
    if items is None:
        return ()
    _expect(items, list, name, "a list of attachment objects")
    inline = name == "inline"
    keys = (*_ATTACHMENT_KEYS, "cid") if inline else _ATTACHMENT_KEYS
    parts = []
    cids: set[str] = set()
    for i, item in enumerate(items):
        where = f"{name}[{i}]"
        item = _expect(item, dict, where, "an object", "invalid_attachment")
        for key in item:
            if key not in keys:
                raise ValidationError("invalid_attachment", "unknown key",
                                      field=f"{where}.{_describe(key)}")
        for key in keys:
            if key not in item:
                raise ValidationError("invalid_attachment", "is required", field=f"{where}.{key}")
        cid = _cid(item["cid"], f"{where}.cid") if inline else None
        if cid is not None:
            # Clients resolve cid: URLs loosely, so a case-only difference still clashes.
            if cid.lower() in cids:
                raise ValidationError("invalid_attachment", "duplicate cid", field=f"{where}.cid")
            cids.add(cid.lower())
        parts.append(Attachment(
            filename=_filename(item["filename"], f"{where}.filename"),
            content_type=_content_type(item["content_type"], f"{where}.content_type"),
            content=_content(item["content"], f"{where}.content"),
            cid=cid,
        ))
    return tuple(parts)


def _filename(value: object, where: str) -> str:
    filename = _expect(value, str, where, "a string", "invalid_attachment")
    if has_forbidden_chars(filename) or "/" in filename or "\\" in filename:
        raise ValidationError("invalid_attachment", "contains a control character or a path "
                              "separator", field=where)
    # Readers strip whitespace at either end of a file name (the email package does), so
    # keeping it would only make the stored message differ from the delivered one.
    filename = filename.strip()
    if not filename or filename in (".", ".."):
        raise ValidationError("invalid_attachment", "must be a non-empty file name", field=where)
    if len(filename) > MAX_FILENAME:
        raise ValidationError("invalid_attachment", "is longer than 255 characters", field=where)
    return filename


def _content_type(value: object, where: str) -> str:
    text = _expect(value, str, where, "a string", "invalid_attachment")
    match = _CONTENT_TYPE.fullmatch(text.lower())
    if len(text) > MAX_CONTENT_TYPE or not match:
        raise ValidationError("invalid_attachment", "must be type/subtype", field=where)
    # A multipart or message body must not be base64-encoded (RFC 2046), and those are
    # the only parts we write.
    if match.group(1) in ("multipart", "message"):
        raise ValidationError("invalid_attachment", "multipart and message types cannot be "
                              "attached", field=where)
    return match.group(0)


def _content(value: object, where: str) -> bytes:
    text = _expect(value, str, where, "a base64 string", "invalid_attachment")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValidationError("invalid_attachment", "is not padded standard base64",
                              field=where) from None


def _cid(value: object, where: str) -> str:
    cid = _expect(value, str, where, "a string", "invalid_attachment")
    if not _CID.fullmatch(cid):
        raise ValidationError("invalid_attachment", "must be 1 to 200 printable ASCII "
                              "characters without spaces or <>", field=where)
    return cid


def _headers(value: object) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    headers = []
    seen: set[str] = set()
    items = _expect(value, dict, "headers", "an object of strings").items()
    for i, (name, text) in enumerate(items):
        where = f"headers[{i}]"
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise ValidationError("invalid_header", "name must be 1 to 76 printable ASCII "
                                  "characters without ':'", field=where)
        where = f"headers.{name}"
        lowered = name.lower()
        if lowered in _RESERVED_HEADERS or lowered.startswith("content-"):
            raise ValidationError("invalid_header", "is set by mailrelay", field=where)
        # Names differing only in case are one header to every reader.
        if lowered in seen:
            raise ValidationError("invalid_header", "is given twice", field=where)
        seen.add(lowered)
        if not isinstance(text, str):
            raise ValidationError("invalid_header", "value must be a string", field=where)
        # Non-ASCII would need encoding that changes what the producer asked for, and is
        # a favourite vehicle for header injection; CR and LF are not printable.
        if not _PRINTABLE_ASCII.fullmatch(text):
            raise ValidationError("invalid_header", "value must be printable ASCII", field=where)
        if len(name) + 2 + len(text) > MAX_HEADER_LINE:
            raise ValidationError("invalid_header", "does not fit on one 998-character line",
                                  field=where)
        headers.append((name, text))
    return tuple(headers)


def _idempotency_key(value: object) -> str | None:
    if value is None:
        return None
    key = _expect(value, str, "idempotency_key", "a string")
    if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY or not _PRINTABLE_ASCII.fullmatch(key):
        raise ValidationError("invalid_message", "must be 1 to 200 printable ASCII characters",
                              field="idempotency_key")
    return key


def _provider(value: object) -> str | None:
    if value is None:
        return None
    provider = _expect(value, str, "provider", "a string")
    if not _PROVIDER.fullmatch(provider):
        raise ValidationError("invalid_message", "must match [a-z][a-z0-9_]{0,31}",
                              field="provider")
    return provider


def lenient_metadata(raw: object) -> Mapping[str, Any]:
    """The metadata of a request that is being refused, if it is valid; else none."""
    if not isinstance(raw, dict):
        return MappingProxyType({})
    try:
        return _metadata(raw.get("metadata"))
    except ValidationError:
        return MappingProxyType({})


def thaw(value: object) -> Any:
    """Plain dicts and lists out of the frozen forms (for JSON)."""
    return _thaw(value)


def _metadata(value: object) -> Mapping[str, Any]:
    if value is None:
        return MappingProxyType({})
    frozen = _MetadataReader().read(_expect(value, dict, "metadata", "an object"), 0)
    assert isinstance(frozen, Mapping)
    return frozen


class _MetadataReader:
    """Checks and deep-freezes metadata while counting its compact UTF-8 JSON size.

    Counting as it goes (every value costs at least one byte) bounds the work on a huge
    or deeply nested input by the size limit instead of by the input.
    """

    def __init__(self) -> None:
        self.size = 0

    def _spend(self, size: int) -> None:
        self.size += size
        if self.size > MAX_METADATA_BYTES:
            raise ValidationError("invalid_message", "is larger than 8192 bytes as JSON",
                                  field="metadata")

    def _string(self, text: str) -> str:
        self._spend(len(text))  # cheap early exit before encoding a huge string
        if _NUL_OR_SURROGATE.search(text):
            # JSON stores (PostgreSQL jsonb among them) refuse both.
            raise ValidationError("invalid_message", "contains NUL or an unpaired surrogate",
                                  field="metadata")
        self._spend(len(json.dumps(text, ensure_ascii=False).encode("utf-8")) - len(text))
        return text

    def read(self, value: object, depth: int) -> object:
        if depth > MAX_METADATA_DEPTH:
            raise ValidationError("invalid_message", "is nested too deeply", field="metadata")
        if value is None or isinstance(value, bool):
            self._spend(len(json.dumps(value)))
            return value
        if isinstance(value, int):
            if value.bit_length() > _MAX_INT_BITS:
                raise ValidationError("invalid_message", "has a number too large for JSON",
                                      field="metadata")
            self._spend(len(str(int(value))))
            return int(value)
        if isinstance(value, float):
            if not math.isfinite(value):
                raise ValidationError("invalid_message", "numbers must be finite",
                                      field="metadata")
            self._spend(len(repr(float(value))))
            return float(value)
        if isinstance(value, str):
            return self._string(value)
        if isinstance(value, list):
            self._spend(2 + max(len(value) - 1, 0))
            return tuple(self.read(item, depth + 1) for item in value)
        if isinstance(value, dict):
            self._spend(2 + max(2 * len(value) - 1, 0))
            frozen = {}
            for key, item in value.items():
                if not isinstance(key, str):
                    raise ValidationError("invalid_message", "keys must be strings",
                                          field="metadata")
                frozen[self._string(key)] = self.read(item, depth + 1)
            return MappingProxyType(frozen)
        raise ValidationError("invalid_message", "values must be JSON", field="metadata")


# --- MIME -----------------------------------------------------------------------------

def make_message_id(unique: str, domain: str) -> str:
    if not _DOT_ATOM_TEXT.fullmatch(unique) or not is_hostname(domain):
        raise ValueError("a Message-ID needs a dot-atom unique part and a lowercase hostname")
    return f"<{unique}@{domain}>"


# The probe has the shape of real ids and dates (a 32-character unique part, the
# sender's domain, a fixed-width RFC 5322 date) so the size it yields is exact.
_PROBE_UNIQUE = "0" * 32
_PROBE_DATE = datetime(2000, 1, 1, tzinfo=UTC)


def mime_size(message: Message, *, include_bcc: bool = False) -> int:
    """The exact length of build_mime's output for any uuid4-hex Message-ID and any date
    whose UTC offset is in whole minutes."""
    # Intake asks for the size right after validate measured it; building a large
    # message twice costs seconds, so the first result is kept on the instance. Equal
    # messages have equal sizes, and the attribute is not a field, so equality ignores it.
    size: int | None = message.__dict__.get("_mime_size")
    if size is None:
        message_id = make_message_id(_PROBE_UNIQUE, message.sender.domain)
        size = len(build_mime(message, message_id=message_id, date=_PROBE_DATE))
        object.__setattr__(message, "_mime_size", size)
    if include_bcc and message.bcc:
        # Headers do not influence the body, so Bcc adds exactly its own lines.
        size += sum(len(line) + 2 for line in fold("Bcc", address_list_tokens(message.bcc)))
    return size


def build_mime(
    message: Message, *, message_id: str, date: datetime, include_bcc: bool = False
) -> bytes:
    if not _MESSAGE_ID.fullmatch(message_id):
        raise ValueError("message_id must look like <unique@domain>")
    if date.utcoffset() is None:
        raise ValueError("date must be timezone-aware")
    root = EmailMessage(policy=_POLICY)
    for name, tokens in _top_headers(message, message_id, date, include_bcc):
        root[name] = _Folded(name, fold(name, tokens))
    body = _body_tree(message)
    # Move the body's content headers and payload onto the root, after our headers.
    for name, value in body.items():
        root[name] = value
    root.set_payload(body.get_payload())
    return root.as_bytes(policy=_POLICY)


class _Folded(str):
    """A header whose folded lines were written by us; the email package copies them
    out as they are (a value with a ``name`` is taken as a finished header object)."""

    name: str
    lines: tuple[str, ...]

    def __new__(cls, name: str, lines: Sequence[str]) -> _Folded:
        self = super().__new__(cls, "".join(lines)[len(name) + 1:].strip(" "))
        self.name = name
        self.lines = tuple(lines)
        return self

    def fold(self, *, policy: Policy) -> str:
        return "".join(line + policy.linesep for line in self.lines)


def _top_headers(
    message: Message, message_id: str, date: datetime, include_bcc: bool
) -> list[tuple[str, list[str]]]:
    headers = [("From", address_list_tokens([message.sender]))]
    for name, mailboxes in (("To", message.to), ("Cc", message.cc),
                            ("Bcc", message.bcc if include_bcc else ()),
                            ("Reply-To", message.reply_to)):
        if mailboxes:
            headers.append((name, address_list_tokens(mailboxes)))
    headers += [
        ("Subject", unstructured_tokens(message.subject)),
        ("Date", [format_datetime(date)]),
        ("Message-ID", [message_id]),
        ("MIME-Version", ["1.0"]),
    ]
    # Producer values are printable ASCII and sent as given, folded only at spaces.
    headers += [(name, value.split(" ") if value else []) for name, value in message.headers]
    return headers


def _body_tree(message: Message) -> MIMEPart:
    texts = []
    if message.text is not None:
        texts.append(_text_part(message.text, "plain"))
    if message.html is not None:
        texts.append(_text_part(message.html, "html"))
    boundaries = _boundaries(message, [str(part.get_payload()) for part in texts])
    # Depth counts from the root: mixed, then related, then alternative, each optional.
    related_depth = 1 if message.attachments else 0
    body = texts[0]
    if len(texts) == 2:
        body = _multipart("alternative", texts, boundaries[related_depth + bool(message.inline)])
    if message.inline:
        parts = [body, *(_binary_part(a, "inline") for a in message.inline)]
        body = _multipart("related", parts, boundaries[related_depth], body.get_content_type())
    if message.attachments:
        parts = [body, *(_binary_part(a, "attachment") for a in message.attachments)]
        body = _multipart("mixed", parts, boundaries[0])
    return body


def _boundaries(message: Message, texts: list[str]) -> list[str]:
    """One boundary per nesting depth, derived from the content so builds repeat.

    Base64 and quoted-printable never contain "=_", but a 7bit text part holds the
    producer's own text, so a candidate found in it is replaced by the next one.
    """
    seed = hashlib.sha256()
    for chunk in (message.subject, message.text or "", message.html or ""):
        _feed(seed, chunk.encode("utf-8", "surrogatepass"))
    for part in message.inline + message.attachments:
        for text in (part.filename, part.content_type, part.cid or ""):
            _feed(seed, text.encode("utf-8", "surrogatepass"))
        _feed(seed, hashlib.sha256(part.content).digest())
    attempt = 0
    while True:
        digest = hashlib.sha256(seed.digest() + attempt.to_bytes(4, "big")).hexdigest()
        candidates = [f"=_mr_{digest[:24]}_{depth}" for depth in range(3)]
        if not any(c in text for c in candidates for text in texts):
            return candidates
        attempt += 1


def _feed(digest: Any, data: bytes) -> None:
    # Length-prefixed so that moving bytes between fields changes the seed.
    digest.update(len(data).to_bytes(8, "big"))
    digest.update(data)


def _text_part(text: str, subtype: str) -> MIMEPart:
    part = MIMEPart(policy=_POLICY)
    part.set_content(text, subtype=subtype, charset="utf-8")
    return part


def _binary_part(attachment: Attachment, disposition: str) -> MIMEPart:
    maintype, _, subtype = attachment.content_type.partition("/")
    part = MIMEPart(policy=_POLICY)
    part.set_content(attachment.content, maintype=maintype, subtype=subtype, cte="base64")
    name = "Content-Disposition"
    part[name] = _Folded(name, disposition_lines(disposition, attachment.filename))
    if attachment.cid is not None:
        part["Content-ID"] = _Folded("Content-ID", [f"Content-ID: <{attachment.cid}>"])
    return part


def _multipart(subtype: str, parts: list[MIMEPart], boundary: str, root: str = "") -> MIMEPart:
    container = MIMEPart(policy=_POLICY)
    # RFC 2387 wants multipart/related to name the type of its root part.
    params = f'; type="{root}"' if root else ""
    container["Content-Type"] = f'multipart/{subtype}{params}; boundary="{boundary}"'
    for part in parts:
        container.attach(part)
    return container
