"""The provider registry: name → adapter class, imported lazily, one instance per process.

Queues, routes and the README's feature table are generated from this table; adding a
provider means its module, a line here, an extras line and its tests.
"""

from __future__ import annotations

import difflib
import importlib
import os

from mailrelay.errors import ValidationError
from mailrelay.providers.base import Capabilities, ProviderAdapter

REGISTRY: dict[str, str] = {
    "gmail": "mailrelay.providers.gmail:GmailAdapter",
    "microsoft": "mailrelay.providers.microsoft:MicrosoftAdapter",
    "sink": "mailrelay.providers.sink:SinkAdapter",
    "smtp": "mailrelay.providers.smtp:SmtpAdapter",
}

QUEUE_PREFIX = "mailrelay."

_instances: dict[tuple[int, str], ProviderAdapter] = {}


def names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def queue_for(name: str) -> str:
    _check(name)
    return QUEUE_PREFIX + name


def _check(name: str) -> None:
    if name not in REGISTRY:
        hint = difflib.get_close_matches(name, list(REGISTRY), n=1)
        suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
        known = ", ".join(REGISTRY)
        raise ValidationError("unknown_provider",
                              f"no provider {name[:40]!r} (known: {known}){suggestion}")


def adapter_class(name: str) -> type[ProviderAdapter]:
    _check(name)
    module_name, _, class_name = REGISTRY[name].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, ProviderAdapter)):
        raise TypeError(f"{REGISTRY[name]} is not a ProviderAdapter")
    return cls


def get(name: str) -> ProviderAdapter:
    """The process's adapter for ``name``; per pid, because sessions must not cross a fork."""
    key = (os.getpid(), name)
    adapter = _instances.get(key)
    if adapter is None:
        adapter = _instances[key] = adapter_class(name)()
    return adapter


def capabilities(name: str) -> Capabilities:
    return adapter_class(name).capabilities
