"""The provider registry: name → adapter class, imported lazily, one instance per process.

The table itself is ``mailrelay.provider_names``, low enough for every layer to read.
Queues, routes and the README's feature table are generated from it; adding a provider
means its module, a line there, an extras line and its tests.
"""

from __future__ import annotations

import importlib
import os

from mailrelay.provider_names import QUEUE_PREFIX, REGISTRY, check, names, queue_for
from mailrelay.providers.base import Capabilities, ProviderAdapter

__all__ = ["QUEUE_PREFIX", "REGISTRY", "adapter_class", "capabilities", "get", "names", "queue_for"]

_instances: dict[tuple[int, str], ProviderAdapter] = {}


def adapter_class(name: str) -> type[ProviderAdapter]:
    check(name)
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
