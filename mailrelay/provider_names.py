"""The provider table: each name, where its adapter lives, and its queue.

Plain data with no import of the adapters, so that every layer can name and check a
provider (the store, auth, Celery's queue list) without importing the provider code that
sits above them; ``mailrelay.providers`` imports the adapters from this table lazily.
"""

from __future__ import annotations

import difflib

from mailrelay.errors import ValidationError

REGISTRY: dict[str, str] = {
    "gmail": "mailrelay.providers.gmail:GmailAdapter",
    "microsoft": "mailrelay.providers.microsoft:MicrosoftAdapter",
    "sink": "mailrelay.providers.sink:SinkAdapter",
    "smtp": "mailrelay.providers.smtp:SmtpAdapter",
}

QUEUE_PREFIX = "mailrelay."


def names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def queue_for(name: str) -> str:
    check(name)
    return QUEUE_PREFIX + name


def check(name: str) -> None:
    """Refuse an unknown provider name with a "did you mean" hint."""
    if name not in REGISTRY:
        hint = difflib.get_close_matches(name, list(REGISTRY), n=1)
        suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
        known = ", ".join(REGISTRY)
        raise ValidationError("unknown_provider",
                              f"no provider {name[:40]!r} (known: {known}){suggestion}")
