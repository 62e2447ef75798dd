"""The content policy applied at intake, after validation and before the message is stored.

- Attachments (and inline parts) whose extension or type is blocked are refused with
  ``attachment_blocked``: nothing of the request is sent.
- Producer HTML is sanitized when the account's policy (or MAILRELAY_HTML_POLICY) says
  ``sanitize``; what was removed is counted in metrics and on the message.
- A message with HTML and no text gets a text alternative made from the (clean) HTML.

The stored message is the one after the policy: deliveries never redo it, and a retry of
the same request (same idempotency key) is recognised by the producer's content.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache

from mailrelay.config import Settings, get_settings
from mailrelay.content import html_depth
from mailrelay.content.attachment_policy import (
    DEFAULT_BLOCKED_CONTENT_TYPES,
    DEFAULT_BLOCKED_EXTENSIONS,
    AttachmentPolicy,
)
from mailrelay.content.html_policy import sanitize
from mailrelay.content.html_text import html_to_text
from mailrelay.errors import ValidationError
from mailrelay.message import Message
from mailrelay.metrics import HTML_REMOVED, HTML_SANITIZED

POLICIES = ("off", "sanitize")
# nh3's HTML parser (html5ever) is superlinear in nesting depth (deep implicit nesting:
# 40 kB took 3.7 s here, 500 kB of list items 100 s); html_depth bounds the depth first.
# Email clients clip far below this size (Gmail at 102 kB), so a legitimate body is never
# refused by it.
SANITIZE_LIMIT = 1024 * 1024


@dataclass(frozen=True)
class Applied:
    message: Message
    # Things sanitizing removed; None when the policy did not sanitize (off, or no HTML).
    html_removed: int | None


def apply(message: Message, account_policy: str | None, settings: Settings | None = None) -> Applied:
    settings = settings or get_settings()
    _check_attachments(message, attachment_policy(settings.blocked_extensions,
                                                  settings.blocked_content_types))
    html, removed = message.html, None
    if html and (account_policy or settings.html_policy) == "sanitize":
        if len(html) > SANITIZE_LIMIT:
            raise ValidationError("message_too_large", f"an HTML body over {SANITIZE_LIMIT} "
                                  "characters is not sanitized; shorten it or turn the "
                                  "account's HTML policy off", field="html")
        if html_depth.depth(html) > html_depth.MAX_DEPTH:
            raise ValidationError("html_too_complex", f"the HTML nests deeper than "
                                  f"{html_depth.MAX_DEPTH} levels, which is not sanitized; "
                                  "flatten it or turn the account's HTML policy off", field="html")
        result = sanitize(html)
        HTML_SANITIZED.labels(result="changed" if result.changed else "unchanged").inc()
        for kind, count in result.removed.items():
            HTML_REMOVED.labels(kind=kind).inc(count)
        removed = sum(result.removed.values())
        # Unchanged HTML keeps the message itself, and with it the size measured of it.
        html = html if result.html == html else result.html
    text = message.text
    if html and not text:
        text = html_to_text(html) or None
    if html is message.html and text is message.text:
        return Applied(message, removed)
    return Applied(dataclasses.replace(message, html=html, text=text), removed)


def _check_attachments(message: Message, policy: AttachmentPolicy) -> None:
    for field, parts in (("attachments", message.attachments), ("inline", message.inline)):
        for part in parts:
            reason = policy.refusal(part.filename, part.content_type)
            if reason is not None:
                raise ValidationError("attachment_blocked", reason, field=field)


@lru_cache(maxsize=8)
def attachment_policy(extensions: str, content_types: str) -> AttachmentPolicy:
    """The policy for the settings' lists: empty means the defaults, ``none`` nothing."""
    return AttachmentPolicy(_listed(extensions, DEFAULT_BLOCKED_EXTENSIONS),
                            _listed(content_types, DEFAULT_BLOCKED_CONTENT_TYPES))


def _listed(value: str, default: frozenset[str]) -> frozenset[str]:
    if not value:
        return default
    words = frozenset(value.split(","))
    return frozenset() if words == {"none"} else words
