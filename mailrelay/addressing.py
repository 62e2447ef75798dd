"""Mailboxes: parsing producers' address strings and writing header text ourselves.

The parser is stricter than the email package's, which accepts nearly anything and
only records defects: an address we could never deliver is refused at intake with a
stable code instead of failing later at a provider.

Header text is written here too, not by the email package, because its folder changes
meaning in edge cases that producers do hit: a long URL in an unstructured header is
turned into encoded words (which breaks List-Unsubscribe), and text that merely looks
like an encoded word ("=?utf-8?q?x?=") is emitted raw, so every reader decodes it.
"""

from __future__ import annotations

import base64
import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import idna

from mailrelay.errors import ValidationError

MAX_ADDRESS_LENGTH = 320
MAX_LOCAL_LENGTH = 64  # RFC 5321; longer local parts are refused by real servers
MAX_DOMAIN_LENGTH = 253
MAX_LABEL_LENGTH = 63
# One mailbox has to fit on one header line, so longer input cannot be a valid address
# and is refused before any parsing work is spent on it.
MAX_MAILBOX_INPUT = 998
LINE_TARGET = 78  # RFC 5322's recommended line length; headers fold to it where they can

# Never allowed in header text: C0 and C1 controls (CR and LF among them), the Unicode
# line and paragraph separators (str.splitlines() and so the email package treat them as
# line breaks) and lone surrogates (JSON can carry them, UTF-8 cannot).
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")

_ATEXT = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~")
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+(?:\.[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+)*")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
# RFC 2231 attribute-char: what may stay unescaped in an extended parameter value.
_ATTR_CHARS = frozenset(string.ascii_letters + string.digits + "!#$&+-.^_`|~")

# 39 bytes become 52 base64 characters; with "=?utf-8?b?" and "?=" a word is 64 long,
# inside RFC 2047's limit of 75 and short enough to follow "Reply-To: " on one line.
_ENCODED_WORD_BYTES = 39


def has_forbidden_chars(text: str) -> bool:
    return _FORBIDDEN.search(text) is not None


@dataclass(frozen=True)
class Mailbox:
    address: str  # normalized addr-spec: punycode, lowercase domain, local part as given
    name: str = ""

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2]

    def formatted(self) -> str:
        """The mailbox as it appears in a header, on one line, ASCII only."""
        return " ".join(mailbox_tokens(self))


class _Malformed(Exception):
    """Why an address is rejected; turned into a ValidationError by the public entry."""


def parse_mailbox(text: str, field: str) -> Mailbox:
    """Parse ``addr``, ``Name <addr>`` or ``"Quoted, Name" <addr>``.

    The detail of the error never contains the address: it ends up in logs.
    """
    try:
        return _parse_mailbox(text)
    except _Malformed as exc:
        raise ValidationError("invalid_address", str(exc), field=field) from None


def _parse_mailbox(text: str) -> Mailbox:
    if len(text) > MAX_MAILBOX_INPUT:
        raise _Malformed("the address is too long")
    if has_forbidden_chars(text):
        raise _Malformed("the address contains a control character or line break")
    text = text.strip(" ")
    if not text.endswith(">"):
        return Mailbox(normalize_addr_spec(text))
    if text.startswith('"'):
        name, end = _read_quoted(text, 0)
        rest = text[end:].lstrip(" ")
        if not rest.startswith("<"):
            raise _Malformed("a quoted display name must be followed by <address>")
    else:
        start = text.find("<")
        if start < 0:
            raise _Malformed("'>' without '<'")
        if any(c in '"\\>' for c in text[:start]):
            raise _Malformed("a display name with quotes or backslashes must be quoted")
        # Each field holds a single mailbox, so an unquoted comma is not ambiguous here;
        # accepting it spares producers from quoting "Doe, Jo" themselves.
        name = " ".join(word for word in text[:start].split(" ") if word)
        rest = text[start:]
    return Mailbox(normalize_addr_spec(rest[1:-1]), name)


def _read_quoted(text: str, start: int) -> tuple[str, int]:
    """Unescape the quoted string at ``text[start]``; return it and the index after it."""
    chars: list[str] = []
    i = start + 1
    while i < len(text):
        char = text[i]
        if char == "\\":
            if i + 1 == len(text):
                break
            chars.append(text[i + 1])
            i += 2
        elif char == '"':
            return "".join(chars), i + 1
        else:
            chars.append(char)
            i += 1
    raise _Malformed("unterminated quoted string")


def normalize_addr_spec(spec: str) -> str:
    if spec.startswith('"'):
        local, end = _read_quoted(spec, 0)
        if spec[end : end + 1] != "@":
            raise _Malformed("a quoted local part must be followed by @")
        domain = spec[end + 1 :]
        if not local:
            raise _Malformed("the local part is empty")
        if not all(" " <= c <= "~" for c in local):
            raise _Malformed("the local part must be ASCII")
        # "jo"@x and jo@x are the same mailbox; keep quotes only where they are needed
        # so that deduplication and hashing see one spelling.
        if not _DOT_ATOM.fullmatch(local):
            local = quote_string(local)
    else:
        local, at, domain = spec.rpartition("@")
        if not at:
            raise _Malformed("the address has no @")
        if not _DOT_ATOM.fullmatch(local):
            raise _Malformed("the local part is not a valid ASCII dot-atom")
    if len(local) > MAX_LOCAL_LENGTH:
        raise _Malformed("the local part is longer than 64 characters")
    address = f"{local}@{normalize_domain(domain)}"
    if len(address) > MAX_ADDRESS_LENGTH:
        raise _Malformed("the address is longer than 320 characters")
    return address


def normalize_domain(domain: str) -> str:
    """Lowercase ASCII hostname; Unicode names become their punycode (IDNA 2008) form."""
    if domain.isascii():
        # Plain ASCII names skip IDNA on purpose: it would refuse legacy LDH names
        # such as "ab--cd.example" that DNS and mail servers accept.
        ascii_domain = domain.lower()
    else:
        try:
            ascii_domain = idna.encode(domain, uts46=True).decode("ascii").lower()
        except (UnicodeError, ValueError):
            raise _Malformed("the domain is not a valid internationalized name") from None
    labels = ascii_domain.split(".")
    if len(labels) < 2:
        raise _Malformed("the domain needs at least two labels")
    if len(ascii_domain) > MAX_DOMAIN_LENGTH:
        raise _Malformed("the domain is longer than 253 characters")
    for label in labels:
        if len(label) > MAX_LABEL_LENGTH or not _LABEL.fullmatch(label):
            raise _Malformed("a domain label is empty, too long or not a hostname label")
    return ascii_domain


def is_hostname(domain: str) -> bool:
    try:
        return normalize_domain(domain) == domain
    except _Malformed:
        return False


def quote_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def display_form(mailbox: Mailbox) -> str:
    """The Unicode form producers send, which parse_mailbox reads back unchanged."""
    if not mailbox.name:
        return mailbox.address
    return f"{quote_string(mailbox.name)} <{mailbox.address}>"


def encoded_words(text: str) -> list[str]:
    """RFC 2047 B-encoded words, each holding whole characters and at most 75 long."""
    chunks: list[str] = []
    current = ""
    size = 0
    for char in text:
        width = len(char.encode("utf-8"))
        if current and size + width > _ENCODED_WORD_BYTES:
            chunks.append(current)
            current, size = "", 0
        current += char
        size += width
    if current:
        chunks.append(current)
    return [f"=?utf-8?b?{base64.b64encode(c.encode('utf-8')).decode('ascii')}?=" for c in chunks]


def _plain_ascii(text: str) -> bool:
    # Readers decode anything shaped like an encoded word, even inside quotes, so text
    # containing "=?" is only safe when it is itself encoded.
    return text.isascii() and "=?" not in text


def phrase_tokens(name: str) -> list[str]:
    """A display name as header tokens that may be folded between."""
    limit = LINE_TARGET - 2  # room for the folding space and a trailing comma
    if _plain_ascii(name):
        words = name.split(" ")
        if all(word and set(word) <= _ATEXT and len(word) <= limit for word in words):
            return words
        quoted = quote_string(name)
        if len(quoted) <= limit:
            return [quoted]
    return encoded_words(name)


def mailbox_tokens(mailbox: Mailbox) -> list[str]:
    if not mailbox.name:
        return [mailbox.address]
    return [*phrase_tokens(mailbox.name), f"<{mailbox.address}>"]


def address_list_tokens(mailboxes: Iterable[Mailbox]) -> list[str]:
    tokens: list[str] = []
    for mailbox in mailboxes:
        if tokens:
            tokens[-1] += ","
        tokens.extend(mailbox_tokens(mailbox))
    return tokens


def unstructured_tokens(text: str) -> list[str]:
    """Tokens for Subject: plain words when they survive as is, encoded words otherwise."""
    if not text:
        return []
    # Readers strip whitespace at either end of a header value, so only encoded words
    # keep it; words longer than a line could not be folded to the line target.
    if _plain_ascii(text) and text.strip(" ") == text:
        words = text.split(" ")
        if all(len(word) < LINE_TARGET for word in words):
            return words
    return encoded_words(text)


def fold(name: str, tokens: Sequence[str]) -> list[str]:
    """Header lines joining ``tokens`` with single spaces, folded before tokens that
    would pass the line target. Unfolding (removing the line breaks) restores the
    joined text exactly. A token longer than a line stays whole on its own line."""
    lines = [f"{name}:"]
    for position, token in enumerate(tokens):
        too_long = len(lines[-1]) + 1 + len(token) > LINE_TARGET
        # Not right after the colon: readers keep that whitespace in some values (a
        # Message-ID among them). Not before an empty token: a line of only whitespace
        # is obsolete syntax.
        if position and token and too_long:
            lines.append(" " + token)
        else:
            lines[-1] += " " + token
    return lines


def disposition_lines(disposition: str, filename: str) -> list[str]:
    """Content-Disposition with the file name quoted when it is plain ASCII, else in
    RFC 2231 form, split into sections of whole characters (readers decode each
    section on its own) so that every line stays within the line target."""
    head = f"Content-Disposition: {disposition};"
    if filename.isascii() and "=?" not in filename:
        param = f"filename={quote_string(filename)}"
        if len(head) + 1 + len(param) <= LINE_TARGET:
            return [f"{head} {param}"]
        return [head, " " + param]  # stays whole: 255 characters, quoted, fit in 998
    encoded = [char if char in _ATTR_CHARS else _percent(char) for char in filename]
    # " filename*NN*=utf-8''" and ";" take at most 21 columns of each line.
    section_limit = LINE_TARGET - 24
    sections: list[str] = []
    for piece in encoded:
        if sections and len(sections[-1]) + len(piece) <= section_limit:
            sections[-1] += piece
        else:
            sections.append(piece)
    if len(sections) == 1:
        return [head, f" filename*=utf-8''{sections[0]}"]
    lines = [head]
    for i, section in enumerate(sections):
        prefix = "utf-8''" if i == 0 else ""
        end = ";" if i < len(sections) - 1 else ""
        lines.append(f" filename*{i}*={prefix}{section}{end}")
    return lines


def _percent(char: str) -> str:
    return "".join(f"%{byte:02X}" for byte in char.encode("utf-8"))
