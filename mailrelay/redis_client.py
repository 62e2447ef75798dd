"""One Redis connection pool per process for mailrelay's own keys (not the broker's)."""

from __future__ import annotations

import os
from typing import Any

import redis

from mailrelay.config import get_settings

_clients: dict[int, redis.Redis] = {}

KEY_PREFIX = "mailrelay:"


def get_redis() -> redis.Redis:
    client = _clients.get(os.getpid())
    if client is None:
        client = _clients[os.getpid()] = redis.Redis.from_url(
            get_settings().redis_url, socket_timeout=10, socket_connect_timeout=5,
            health_check_interval=30)
    return client


_scripts: dict[tuple[int, str], Any] = {}


def script(source: str) -> Any:
    """A Lua script registered once per client (EVALSHA, loaded again if Redis forgot it)."""
    client = get_redis()
    found = _scripts.get((id(client), source))
    if found is None:
        found = _scripts[(id(client), source)] = client.register_script(source)
    return found


def key(*parts: str) -> str:
    return KEY_PREFIX + ":".join(parts)
