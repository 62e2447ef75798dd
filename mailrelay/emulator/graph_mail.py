"""Graph's message resource: reading the JSON clients send, the RFC 822 copy a
recipient gets, the JSON Graph answers with, and the ``$filter`` forms mailrelay uses.

No HTTP and no state here: microsoft.py does the wire, state.py the remembering.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import mimetypes
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, formataddr
from typing import Any

REQUEST_LIMIT = 4 * 1024 * 1024  # sendMail, message and attachment POSTs
CHUNK_LIMIT = 4 * 1024 * 1024  # one PUT to an upload URL
# Graph's documentation says upload sessions are for files "between 3 MB and 150 MB",
# and createUploadSession refuses smaller ones; the limit measured is 2 MiB.
UPLOAD_MINIMUM = 2 * 1024 * 1024
ATTACHMENT_LIMIT = 150 * 1024 * 1024
MESSAGE_LIMIT = 150 * 1024 * 1024
FILE_ATTACHMENT = "#microsoft.graph.fileAttachment"

# Every property of microsoft.graph.message: Graph refuses names outside the type.
_MESSAGE_PROPERTIES = frozenset(name.lower() for name in (
    "attachments", "bccRecipients", "body", "bodyPreview", "categories", "ccRecipients",
    "changeKey", "conversationId", "conversationIndex", "createdDateTime", "extensions", "flag",
    "from", "hasAttachments", "id", "importance", "inferenceClassification",
    "internetMessageHeaders", "internetMessageId", "isDeliveryReceiptRequested", "isDraft",
    "isRead", "isReadReceiptRequested", "lastModifiedDateTime", "multiValueExtendedProperties",
    "parentFolderId", "receivedDateTime", "replyTo", "sender", "sentDateTime",
    "singleValueExtendedProperties", "subject", "toRecipients", "uniqueBody", "webLink",
))
_ATTACHMENT_PROPERTIES = frozenset(name.lower() for name in (
    "contentBytes", "contentId", "contentLocation", "contentType", "id", "isInline",
    "lastModifiedDateTime", "name", "size",
))
_RECIPIENT_FIELDS = (("to", "toRecipients"), ("cc", "ccRecipients"), ("bcc", "bccRecipients"),
                     ("reply_to", "replyTo"))
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_HEADER_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322: printable, no colon


class GraphError(Exception):
    """A request Graph refuses: its status, error code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _unreadable(message: str) -> GraphError:
    return GraphError(400, "RequestBodyRead", message)


def graph_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_id() -> str:
    """An opaque Graph item id, in the shape Exchange's ids have."""
    return "AAMkAGI" + secrets.token_urlsafe(48) + "AAA="


def new_internet_message_id() -> str:
    return f"<{secrets.token_hex(16)}@emulator>"


def normalize_message_id(value: str) -> str:
    return value.strip().strip("<>").strip().lower()


@dataclass(frozen=True)
class Recipient:
    address: str
    name: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"emailAddress": {"name": self.name or self.address, "address": self.address}}

    def header(self) -> str:
        try:
            return str(Address(display_name=self.name or "", addr_spec=self.address))
        except (ValueError, IndexError):
            return formataddr((self.name or "", self.address))


@dataclass(frozen=True)
class Attachment:
    id: str
    name: str
    content_type: str
    data: bytes = field(repr=False)
    is_inline: bool = False
    content_id: str | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def as_json(self, *, with_hash: bool = False) -> dict[str, Any]:
        shown: dict[str, Any] = {
            "@odata.type": FILE_ATTACHMENT, "id": self.id, "name": self.name,
            "contentType": self.content_type, "size": len(self.data), "isInline": self.is_inline,
            "contentId": self.content_id,
        }
        if with_hash:
            shown["sha256"] = self.sha256
        return shown


@dataclass
class GraphMessage:
    subject: str = ""
    body_type: str = "text"  # "text" or "html"
    body: str = ""
    to: tuple[Recipient, ...] = ()
    cc: tuple[Recipient, ...] = ()
    bcc: tuple[Recipient, ...] = ()
    reply_to: tuple[Recipient, ...] = ()
    sender: Recipient | None = None  # the "from" property, when the client set it
    headers: tuple[tuple[str, str], ...] = ()
    internet_message_id: str | None = None
    properties: tuple[tuple[str, str], ...] = ()  # singleValueExtendedProperties
    attachments: list[Attachment] = field(default_factory=list)

    def recipients(self) -> tuple[str, ...]:
        """Every address the message goes to, lowercased, each once."""
        seen: dict[str, None] = {}
        for recipient in (*self.to, *self.cc, *self.bcc):
            seen.setdefault(recipient.address.lower(), None)
        return tuple(seen)

    def size(self) -> int:
        return len(self.body.encode("utf-8")) + sum(len(a.data) for a in self.attachments)


# --- reading requests -----------------------------------------------------------------


def _lowered(raw: dict[str, Any]) -> dict[str, Any]:
    """Graph matches property names without regard to case."""
    return {str(key).lower(): value for key, value in raw.items()}


def _check_properties(raw: dict[str, Any], known: frozenset[str], type_name: str) -> None:
    for key in raw:
        if not key.startswith("@") and key not in known:
            raise _unreadable(f"The property '{key}' does not exist on type '{type_name}'. Make sure "
                              "to only use property names that are defined by the type or mark the "
                              "type as open type.")


def _string(raw: dict[str, Any], key: str, *, default: str | None = None) -> str | None:
    value = raw.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise _unreadable(f"Cannot convert the literal '{value}' to the expected type 'Edm.String'.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:  # a lone surrogate from a JSON \ud800 escape
        raise _unreadable(f"Invalid UTF-16 in the property '{key}'.") from err
    return value


def _bool(raw: dict[str, Any], key: str, default: bool) -> bool:
    value = raw.get(key)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise _unreadable(f"Cannot convert the literal '{value}' to the expected type 'Edm.Boolean'.")


def _list(raw: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = raw.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise _unreadable(f"Invalid value for the collection property '{key}': expected an array "
                          "of objects.")
    return [_lowered(item) for item in value]


def _recipient(raw: dict[str, Any]) -> Recipient:
    email = raw.get("emailaddress")
    if not isinstance(email, dict):
        raise _unreadable("A recipient must have an 'emailAddress' object.")
    email = _lowered(email)
    address = (_string(email, "address") or "").strip()
    name = _string(email, "name")
    return Recipient(address, name.strip() if name and name.strip() else None)


def parse_attachment(raw: object) -> Attachment:
    """A fileAttachment as clients send it; GraphError for anything else."""
    if not isinstance(raw, dict):
        raise _unreadable("An attachment must be a JSON object.")
    item = _lowered(raw)
    kind = item.get("@odata.type")
    if kind is None:
        raise _unreadable("A type name was not provided for an instance of the abstract type "
                          "'microsoft.graph.attachment'. Set '@odata.type'.")
    if not isinstance(kind, str) or kind.lstrip("#").lower() != FILE_ATTACHMENT.lstrip("#").lower():
        raise GraphError(400, "ErrorInvalidRequest",
                         f"The emulator supports file attachments only, not '{kind}'.")
    _check_properties(item, _ATTACHMENT_PROPERTIES, "microsoft.graph.fileAttachment")
    name = _string(item, "name")
    if not name:
        raise GraphError(400, "ErrorInvalidRequest", "The attachment name is required.")
    content = _string(item, "contentbytes")
    if content is None:
        raise GraphError(400, "ErrorInvalidRequest", "The attachment contentBytes is required.")
    data = _decode_base64(content)
    if data is None:
        raise _unreadable("Cannot convert the literal to the expected type 'Edm.Binary': "
                          "contentBytes is not valid base64.")
    content_id = (_string(item, "contentid") or "").strip().strip("<>").strip()
    return Attachment(
        id=new_attachment_id(), name=name,
        content_type=_string(item, "contenttype") or guess_type(name), data=data,
        is_inline=_bool(item, "isinline", False), content_id=content_id or None)


@dataclass(frozen=True)
class UploadItem:
    """createUploadSession's AttachmentItem: the file to come, without its bytes."""

    name: str
    size: int
    content_type: str
    is_inline: bool
    content_id: str | None


def parse_upload_item(body: object) -> UploadItem:
    if not isinstance(body, dict):
        raise GraphError(400, "BadRequest", "Empty Payload. JSON content expected.")
    item = _lowered(body).get("attachmentitem")
    if not isinstance(item, dict):
        raise GraphError(400, "ErrorInvalidParameter", "The value of the parameter "
                         "'AttachmentItem' is empty.")
    item = _lowered(item)
    kind = _string(item, "attachmenttype", default="file") or "file"
    if kind.lower() != "file":
        raise GraphError(400, "ErrorInvalidRequest", "The emulator supports attachmentType 'file' only.")
    name, size = _string(item, "name"), item.get("size")
    if not name:
        raise GraphError(400, "ErrorInvalidRequest", "The attachment name is required.")
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise GraphError(400, "ErrorInvalidRequest", "The attachment size must be a positive integer.")
    if size < UPLOAD_MINIMUM:
        raise GraphError(400, "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize",
                         "Attachment size should not be less than the minimum size for an upload "
                         "session: attach files under 3 MB with a POST to attachments.")
    if size > ATTACHMENT_LIMIT:
        raise GraphError(400, "ErrorMessageSizeExceeded", "The message exceeds the maximum "
                         "supported size.")
    content_id = (_string(item, "contentid") or "").strip().strip("<>").strip()
    return UploadItem(name, size, _string(item, "contenttype") or guess_type(name),
                      _bool(item, "isinline", False), content_id or None)


def new_attachment_id() -> str:
    return "AAMkAGI" + secrets.token_urlsafe(24) + "BEgAQA="


def guess_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def parse_message(raw: object) -> GraphMessage:
    """A message resource as clients write it; GraphError with Graph's code when off."""
    if not isinstance(raw, dict):
        raise _unreadable("Empty Payload. JSON content expected.")
    item = _lowered(raw)
    _check_properties(item, _MESSAGE_PROPERTIES, "microsoft.graph.message")
    message = GraphMessage(subject=_string(item, "subject", default="") or "")
    body = item.get("body")
    if body is not None:
        if not isinstance(body, dict):
            raise _unreadable("The property 'body' must be an itemBody object.")
        body = _lowered(body)
        kind = (_string(body, "contenttype", default="text") or "text").lower()
        if kind not in ("text", "html"):
            raise _unreadable(f"Requested value '{body.get('contenttype')}' was not found.")
        message.body_type = kind
        message.body = _string(body, "content", default="") or ""
    for attribute, key in _RECIPIENT_FIELDS:
        setattr(message, attribute, tuple(_recipient(r) for r in _list(item, key.lower())))
    sender = item.get("from")
    if sender is not None:
        if not isinstance(sender, dict):
            raise _unreadable("The property 'from' must be a recipient object.")
        message.sender = _recipient(_lowered(sender))
    headers = []
    for header in _list(item, "internetmessageheaders"):
        name, value = _string(header, "name") or "", _string(header, "value", default="") or ""
        if not name.lower().startswith("x-") or not _HEADER_NAME.fullmatch(name):
            raise GraphError(400, "InvalidInternetMessageHeader",
                             f"The internet message header name '{name}' should start with 'x-' "
                             "or 'X-'.")
        headers.append((name, value))
    message.headers = tuple(headers)
    message.internet_message_id = _string(item, "internetmessageid") or None
    properties = []
    for prop in _list(item, "singlevalueextendedproperties"):
        prop_id, prop_value = _string(prop, "id"), _string(prop, "value")
        if not prop_id or prop_value is None:
            raise GraphError(400, "ErrorInvalidRequest",
                             "A single-value extended property needs an id and a value.")
        properties.append((prop_id, prop_value))
    message.properties = tuple(properties)
    raw_attachments = item.get("attachments")
    if raw_attachments is not None:
        if not isinstance(raw_attachments, list):
            raise _unreadable("The property 'attachments' must be an array.")
        message.attachments = [parse_attachment(a) for a in raw_attachments]
    return message


def check_sendable(message: GraphMessage) -> None:
    """What Exchange refuses at submission: no recipients, or one it cannot resolve."""
    everyone = (*message.to, *message.cc, *message.bcc)
    if not everyone:
        raise GraphError(400, "ErrorInvalidRecipients", "At least one recipient isn't valid., A "
                         "message can't be sent because it contains no recipients.")
    for recipient in everyone:
        if not valid_address(recipient.address):
            raise GraphError(400, "ErrorInvalidRecipients", "At least one recipient isn't valid., "
                             f"Recipient '{recipient.address}' isn't resolved. All recipients must "
                             "be resolved before a message can be submitted.")
    if message.size() > MESSAGE_LIMIT:
        raise GraphError(400, "ErrorMessageSizeExceeded", "The message exceeds the maximum "
                         "supported size.")


def valid_address(address: str) -> bool:
    local, at, domain = address.rpartition("@")
    domain = domain.rstrip(".").lower()
    if not at or not local or not domain or any(c.isspace() for c in address):
        return False
    # RFC 2606 reserves .invalid for names that must never resolve.
    return domain != "invalid" and not domain.endswith(".invalid")


def _decode_base64(text: str) -> bytes | None:
    text = "".join(text.split())
    if not _BASE64.fullmatch(text):
        return None
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


# --- the copy recipients get ---------------------------------------------------------


def to_mime(message: GraphMessage, sender: Recipient, internet_message_id: str,
            sent_at: datetime) -> bytes:
    """The message as Exchange hands it on: an RFC 822 copy, Bcc included (strip it for
    the recipients' copies). HTML with inline parts becomes multipart/related, file
    attachments wrap that in multipart/mixed."""
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = _one_line(sender.header())
    for attribute, header in (("to", "To"), ("cc", "Cc"), ("bcc", "Bcc"), ("reply_to", "Reply-To")):
        recipients: tuple[Recipient, ...] = getattr(message, attribute)
        if recipients:
            msg[header] = _one_line(", ".join(r.header() for r in recipients))
    msg["Subject"] = _one_line(message.subject)
    msg["Date"] = format_datetime(sent_at.astimezone(UTC))
    msg["Message-ID"] = _one_line(internet_message_id)
    for name, value in message.headers:
        msg[name] = _one_line(value)
    msg.set_content(message.body, subtype="html" if message.body_type == "html" else "plain",
                    charset="utf-8")
    for attachment in message.attachments:
        if attachment.is_inline and attachment.content_id:
            maintype, subtype = _split_type(attachment.content_type)
            msg.add_related(attachment.data, maintype, subtype, cid=f"<{attachment.content_id}>",
                            filename=attachment.name, disposition="inline")
    for attachment in message.attachments:
        if not (attachment.is_inline and attachment.content_id):
            maintype, subtype = _split_type(attachment.content_type)
            msg.add_attachment(attachment.data, maintype, subtype, filename=attachment.name,
                               disposition="inline" if attachment.is_inline else "attachment")
    return msg.as_bytes()


def _one_line(value: str) -> str:
    """Header values may not break lines (the email package refuses them)."""
    return " ".join(value.splitlines())


def _split_type(content_type: str) -> tuple[str, str]:
    maintype, _, subtype = content_type.partition(";")[0].strip().lower().partition("/")
    if not maintype or not subtype or maintype in ("multipart", "message"):
        return "application", "octet-stream"
    return maintype, subtype


# --- Graph's answers -----------------------------------------------------------------


def message_json(item_id: str, message: GraphMessage, sender: Recipient, *, is_draft: bool,
                 internet_message_id: str, created: datetime, sent: datetime | None,
                 folder: str) -> dict[str, Any]:
    """The message resource as Graph returns it (attachments without their bytes, and
    the extended properties only for $expand, as in Graph)."""
    preview = re.sub(r"<[^>]*>", " ", message.body) if message.body_type == "html" else message.body
    return {
        "@odata.etag": f'W/"{secrets.token_urlsafe(12)}"',
        "id": item_id,
        "createdDateTime": graph_time(created),
        "lastModifiedDateTime": graph_time(sent or created),
        "receivedDateTime": graph_time(sent or created),
        "sentDateTime": None if sent is None else graph_time(sent),
        "hasAttachments": any(not a.is_inline for a in message.attachments),
        "internetMessageId": internet_message_id,
        "subject": message.subject,
        "bodyPreview": " ".join(preview.split())[:255],
        "importance": "normal",
        "parentFolderId": folder,
        "conversationId": "AAQkAGI" + hashlib.sha256(item_id.encode()).hexdigest()[:32],
        "isDeliveryReceiptRequested": False,
        "isReadReceiptRequested": False,
        "isRead": True,
        "isDraft": is_draft,
        "body": {"contentType": message.body_type, "content": message.body},
        "sender": sender.as_json(),
        "from": (message.sender or sender).as_json(),
        "toRecipients": [r.as_json() for r in message.to],
        "ccRecipients": [r.as_json() for r in message.cc],
        "bccRecipients": [r.as_json() for r in message.bcc],
        "replyTo": [r.as_json() for r in message.reply_to],
        "internetMessageHeaders": [{"name": n, "value": v} for n, v in message.headers],
        "singleValueExtendedProperties": [{"id": i, "value": v} for i, v in message.properties],
        "attachments": [a.as_json(with_hash=True) for a in message.attachments],
    }


_HIDDEN_UNLESS_ASKED = ("internetMessageHeaders", "singleValueExtendedProperties", "attachments")


def project(item: dict[str, Any], select: str | None, expand: str | None) -> dict[str, Any]:
    """``item`` as a list answer shows it: the ``$select``ed properties (id always), and
    extended properties or attachments only when ``$expand``ed."""
    expanded = {part.split("(", 1)[0].strip().lower() for part in (expand or "").split(",")}
    wanted = None if not select else {name.strip().lower() for name in select.split(",")}
    shown = {}
    for key, value in item.items():
        lowered = key.lower()
        asked = lowered in expanded or (wanted is not None and lowered in wanted)
        if key in _HIDDEN_UNLESS_ASKED:
            if not asked:
                continue
        elif wanted is not None and not asked and key not in ("id", "@odata.etag"):
            continue
        if key == "attachments":  # the hash is the emulator's, for tests, not Graph's
            value = [{k: v for k, v in a.items() if k != "sha256"} for a in value]
        shown[key] = value
    return shown


# --- $filter ---------------------------------------------------------------------------

_QUOTED = r"'((?:[^']|'')*)'"
_BY_MESSAGE_ID = re.compile(r"\s*internetMessageId\s+eq\s+" + _QUOTED + r"\s*", re.IGNORECASE)
_BY_PROPERTY = re.compile(
    r"\s*singleValueExtendedProperties\s*/\s*any\s*\(\s*(\w+)\s*:\s*\1\s*/\s*id\s+eq\s+" + _QUOTED
    + r"\s+and\s+\1\s*/\s*value\s+eq\s+" + _QUOTED + r"\s*\)\s*", re.IGNORECASE)

Predicate = Callable[[dict[str, Any]], bool]


def parse_filter(text: str | None) -> Predicate:
    """The forms mailrelay uses: ``internetMessageId eq '<id>'`` and an extended
    property's exact id and value; GraphError for anything else."""
    if text is None or not text.strip():
        return lambda item: True
    found = _BY_MESSAGE_ID.fullmatch(text)
    if found:
        wanted = normalize_message_id(found.group(1).replace("''", "'"))
        return lambda item: normalize_message_id(item.get("internetMessageId") or "") == wanted
    found = _BY_PROPERTY.fullmatch(text)
    if found:
        prop_id = _property_id(found.group(2).replace("''", "'"))
        value = found.group(3).replace("''", "'")
        return lambda item: any(
            _property_id(p["id"]) == prop_id and p["value"] == value
            for p in item.get("singleValueExtendedProperties", []))
    raise GraphError(400, "BadRequest", f"Invalid filter clause: the emulator supports "
                     f"internetMessageId eq '...' and singleValueExtendedProperties/Any(ep: "
                     f"ep/id eq '...' and ep/value eq '...'), not: {text}")


def _property_id(text: str) -> str:
    """Property ids compare without regard to case or spacing, as Exchange's do; the
    name after "Name" keeps its case."""
    parts = re.split(r"\s+name\s+", " ".join(text.split()), maxsplit=1, flags=re.IGNORECASE)
    return parts[0].lower() + ("" if len(parts) == 1 else " name " + parts[1])
