"""Per-mailbox concurrency across every worker: a Redis semaphore whose slots expire.

A slot is a member of a sorted set scored by the Redis server's clock when it was taken.
Taking one is one Lua script (atomic): drop slots older than the slot lifetime (their
holder died without releasing), then take a slot if fewer than the limit are held. The
lifetime is the claim lease, the longest a send may take.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

from mailrelay.config import get_settings
from mailrelay.errors import ProviderError
from mailrelay.redis_client import get_redis, key, script

_ACQUIRE = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms - tonumber(ARGV[1]))
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
    redis.call('ZADD', KEYS[1], ms, ARGV[3])
    redis.call('PEXPIRE', KEYS[1], ARGV[1])
    return 1
end
return 0
"""

def _acquire_script() -> Any:
    return script(_ACQUIRE)


@contextmanager
def mailbox_slot(account_id: int, limit: int, *, wait: float = 30.0,
                 provider: str | None = None) -> Iterator[None]:
    """Hold one of ``limit`` slots of the mailbox for the duration of the block."""
    name = key("slots", str(account_id))
    token = uuid.uuid4().hex
    lifetime_ms = get_settings().lease_seconds * 1000
    script = _acquire_script()
    deadline = time.monotonic() + wait
    while not cast(int, script(keys=[name], args=[lifetime_ms, limit, token])):
        if time.monotonic() > deadline:
            raise ProviderError("rate_limited", f"the mailbox has {limit} sends in flight",
                                provider=provider, retry_after=5)
        time.sleep(random.uniform(0.02, 0.1))  # noqa: S311  # jitter, not a secret
    try:
        yield
    finally:
        get_redis().zrem(name, token)
