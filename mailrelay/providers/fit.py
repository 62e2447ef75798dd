"""Whether a message fits a provider's declared capabilities (``Capabilities``).

Intake checks every message against the provider that will send it; the rollout's
rerouting checks a waiting message against its fallback before moving it.
"""

from __future__ import annotations

from mailrelay import providers
from mailrelay.errors import ValidationError
from mailrelay.message import Message, mime_size


def check(message: Message, provider: str) -> int:
    """The message's size in bytes; raises ValidationError naming what does not fit."""
    caps = providers.capabilities(provider)
    if len(message.recipients) > caps.max_recipients:
        raise ValidationError("too_many_recipients",
                              f"{len(message.recipients)} recipients; {provider} allows "
                              f"{caps.max_recipients}", field="to")
    # The form with Bcc is the larger one (the Gmail API sends it inside the message).
    size = mime_size(message, include_bcc=True)
    if size > caps.max_message_bytes:
        raise ValidationError("message_too_large",
                              f"{size} bytes; {provider} allows {caps.max_message_bytes}")
    if caps.header_prefix:
        prefix = caps.header_prefix.lower()
        if any(not name.lower().startswith(prefix) for name, _ in message.headers):
            raise ValidationError("invalid_header", f"{provider} sends only headers starting with "
                                  f"{caps.header_prefix}", field="headers")
    if message.inline and not caps.inline_images:
        raise ValidationError("invalid_attachment", f"{provider} cannot send inline images",
                              field="inline")
    return size
