"""Worker profiles, one module per queue: queues, pool, concurrency, prefetch. No logic.

Run one with ``mailrelay worker --profile NAME``. Each module defines ``PROFILE``, a
``mailrelay.worker_profiles.WorkerProfile``; ``names`` and ``load`` find them here, so
that the dependency runs one way: the CLI imports this package, which imports the
dataclass below everything else.
"""

from __future__ import annotations

import importlib
import pkgutil

from mailrelay.worker_profiles import WorkerProfile


def names() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def load(name: str) -> WorkerProfile:
    if name not in names():
        raise KeyError(f"no worker profile {name!r}; profiles: {', '.join(names())}")
    profile = importlib.import_module(f"{__name__}.{name}").PROFILE
    if not isinstance(profile, WorkerProfile):
        raise TypeError(f"{__name__}.{name}.PROFILE is not a WorkerProfile")
    return profile
