"""Reading delivered messages: the envelope at send time, a summary for the API and the
inbox page, and inline parts by Content-ID."""

from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesHeaderParser, BytesParser
from typing import Any

from mailrelay.emulator.state import StoredMessage

_PARSER = BytesParser(policy=policy.default)


class InvalidAddress(ValueError):
    """A recipient Google would refuse; the message names the header."""


@dataclass(frozen=True)
class Envelope:
    recipients: tuple[str, ...]  # To + Cc + Bcc addresses, each once
    message_id: str  # the Message-ID header as written, "" when absent


def envelope(raw: bytes) -> Envelope:
    headers = _PARSER.parsebytes(raw, headersonly=True)
    recipients: dict[str, str] = {}
    for name in ("To", "Cc", "Bcc"):
        for address in _addresses(headers, name):
            domain = address.rpartition("@")[2].rstrip(".").lower()
            # RFC 2606 reserves .invalid for names that must never resolve.
            if "@" not in address or not domain or domain == "invalid" or domain.endswith(".invalid"):
                # Whatever the header, Gmail says "Invalid To header". The emulator adds the
                # address it refused, as Graph's ErrorInvalidRecipients text does: a
                # provider's text may name a recipient, and mailrelay must store none.
                raise InvalidAddress(f"Invalid To header: '{address}'")
            recipients.setdefault(address.lower(), address)
    return Envelope(tuple(recipients), str(headers.get("Message-ID", "")).strip())


def _addresses(headers: Message, name: str) -> list[str]:
    found: list[str] = []
    for header in headers.get_all(name, []):
        try:
            found += [a.addr_spec for a in _parsed(header)]
        except (AttributeError, ValueError, IndexError) as err:
            raise InvalidAddress("Invalid To header") from err
    return found


def _parsed(header: object) -> tuple[Any, ...]:
    """The addresses of a header parsed by the default policy (an AddressHeader)."""
    addresses = getattr(header, "addresses", None)
    if addresses is None:
        raise ValueError("not an address header")
    return tuple(addresses)


def strip_header(raw: bytes, name: str) -> bytes:
    """``raw`` without every ``name`` header (continuation lines included); the rest of
    the bytes untouched, unlike a round trip through the email package."""
    end = _header_end(raw)
    kept: list[bytes] = []
    dropping = False
    for line in raw[:end].splitlines(keepends=True):
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                kept.append(line)
            continue
        dropping = line.split(b":", 1)[0].strip().lower() == name.lower().encode("ascii")
        if not dropping:
            kept.append(line)
    return b"".join(kept) + raw[end:]


def _header_end(raw: bytes) -> int:
    """Where the blank line after the headers starts (its line break included in it)."""
    ends = [i + 1 if sep == b"\n\n" else i + 2 for sep in (b"\r\n\r\n", b"\n\n")
            if (i := raw.find(sep)) >= 0]
    return min(ends) if ends else len(raw)


def summarize(stored: StoredMessage) -> dict[str, Any]:
    if stored.summary is None:
        stored.summary = {
            "id": stored.id,
            "mailbox": stored.mailbox,
            "size": len(stored.raw),
            "received_at": stored.received_at.isoformat(),
            **_describe(_parse(stored.raw)),
        }
    return stored.summary


def _parse(raw: bytes) -> EmailMessage:
    parsed = _PARSER.parsebytes(raw)
    assert isinstance(parsed, EmailMessage)  # the default policy's message factory
    return parsed


def _describe(msg: EmailMessage) -> dict[str, Any]:
    text = html = None
    inline: list[dict[str, Any]] = []
    attachments: list[dict[str, Any]] = []
    for part in msg.walk():
        if part.is_multipart():
            continue
        kind = part.get_content_type()
        disposition = part.get_content_disposition()
        cid = _cid(part)
        if kind == "text/plain" and text is None and disposition != "attachment" and cid is None:
            text = _text(part)
        elif kind == "text/html" and html is None and disposition != "attachment" and cid is None:
            html = _text(part)
        elif cid is not None and disposition != "attachment":
            inline.append({"cid": cid, **_file(part)})
        else:
            attachments.append(_file(part))
    return {
        "message_id": _header(msg, "Message-ID"),
        "from": _header(msg, "From"),
        "to": _address_list(msg, "To"),
        "cc": _address_list(msg, "Cc"),
        "subject": _header(msg, "Subject"),
        "date": _header(msg, "Date"),
        "text": text,
        "html": html,
        "structure": structure(msg),
        "inline": inline,
        "attachments": attachments,
    }


def structure(msg: Message) -> str:
    """The nesting of containers along the first branch, e.g. "multipart/mixed >
    multipart/related > multipart/alternative"; a single part is just its type."""
    chain = [msg.get_content_type()]
    node = msg
    while node.is_multipart():
        payload = node.get_payload()
        inner = [p for p in payload if isinstance(p, Message) and p.is_multipart()]
        if not inner:
            break
        node = inner[0]
        chain.append(node.get_content_type())
    return " > ".join(chain)


def _text(part: EmailMessage) -> str:
    try:
        content = part.get_content()
    except (LookupError, ValueError):  # an unknown charset: show what can be shown
        payload = part.get_payload(decode=True)
        content = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    return str(content)


def _file(part: Message) -> dict[str, Any]:
    data = _bytes(part)
    return {
        "filename": part.get_filename(),
        "content_type": part.get_content_type(),
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def _bytes(part: Message) -> bytes:
    payload = part.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


def _cid(part: Message) -> str | None:
    value = part.get("Content-ID")
    if value is None:
        return None
    return str(value).strip().strip("<>").strip() or None


def _header(msg: Message, name: str) -> str | None:
    value = msg.get(name)
    return None if value is None else str(value)


def _address_list(msg: Message, name: str) -> list[str]:
    found: list[str] = []
    for header in msg.get_all(name, []):
        try:
            found += [str(a) for a in _parsed(header)]
        except (AttributeError, ValueError, IndexError):
            found.append(str(header))
    return found


def inline_part(stored: StoredMessage, cid: str) -> tuple[str, bytes] | None:
    """The content type and bytes of the part whose Content-ID is ``cid``; cid: URLs
    are matched loosely by mail clients, so case does not count."""
    for part in _parse(stored.raw).walk():
        found = _cid(part)
        if not part.is_multipart() and found is not None and found.lower() == cid.lower():
            return part.get_content_type(), _bytes(part)
    return None


def boundary_of(content_type: str) -> str | None:
    holder = Message()
    holder["Content-Type"] = content_type
    boundary = holder.get_boundary()
    return boundary or None


def split_multipart(body: bytes, boundary: str) -> list[tuple[Message, bytes]]:
    """The parts of a multipart body, each as its headers and its exact bytes.

    Not the email package: it would parse a message/rfc822 part into a message and
    give back different bytes. Lines may end in CRLF or LF, since some client
    libraries write bare LF.
    """
    delimiter = re.compile(
        rb"(?:\A|\r?\n)--" + re.escape(boundary.encode("ascii", "replace")) + rb"(--)?[ \t]*(?:\r?\n|\Z)")
    marks = list(delimiter.finditer(body))
    parts: list[tuple[Message, bytes]] = []
    for mark, following in itertools.pairwise(marks):
        if mark.group(1):  # the closing delimiter
            break
        chunk = body[mark.end():following.start()]
        # A part without headers starts with the blank line at once.
        head_end = 0 if chunk.startswith((b"\r\n", b"\n")) else _header_end(chunk)
        rest = chunk[head_end:]
        # The blank line that ends the headers belongs to neither side.
        content = rest[2:] if rest.startswith(b"\r\n") else rest[1:] if rest.startswith(b"\n") else rest
        parts.append((BytesHeaderParser().parsebytes(chunk[:head_end]), content))
    return parts
