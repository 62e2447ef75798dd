"""Per-mailbox sending rate across every worker: a token bucket in Redis.

One bucket per account, kept in a Redis hash and changed by one Lua script (atomic),
timed by the Redis server's clock so that workers on several hosts agree. The bucket
holds at most ``burst(per_minute)`` tokens (BURST_SECONDS' worth, at least one) and
refills continuously at ``per_minute / 60`` tokens a second; a send takes one token.

The bound this gives, and that the tests check: in any window of W seconds at most
``burst + per_minute * W / 60`` sends take a token. (At the window's start the bucket
holds at most ``burst``; during it at most ``rate * W`` flow in; a token is never taken
twice.)

A caller that finds no token takes none and is told when to ask again. Callers told to
wait are given turns one refill interval apart (the bucket remembers the last turn it
gave), so a backlog comes back spread at the sending rate instead of all at once when
the next token appears; a turn is a hint, not a reservation, so the bound holds
whoever comes back first. Turns are never more than ``max_wait`` ahead: beyond that a
caller is told to ask again then.

A bucket's key expires once it is full again and its last turn has passed, when it
says nothing a new (full) bucket would not: idle mailboxes cost no memory.
"""

from __future__ import annotations

from typing import Any, cast

from mailrelay.redis_client import key, script

# Burst: the tokens a full bucket holds, in seconds of the sending rate. Ten seconds lets
# a quiet mailbox send a short batch at once, while no minute carries more than a sixth
# over the rate (Gmail 150/min: a burst of 25, at most 175 in any minute; Microsoft
# 30/min: 5; an override of 60/min: 10).
BURST_SECONDS = 10

# KEYS[1] the bucket; ARGV: capacity, refill per second, longest turn ahead (seconds).
# Fields: tokens, at (when tokens was computed), turn (the last turn given to a waiter);
# times are the server's, in seconds with microseconds.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local held = redis.call('HMGET', KEYS[1], 'tokens', 'at', 'turn')
local tokens = tonumber(held[1]) or capacity
local at = tonumber(held[2]) or now
local turn = tonumber(held[3]) or 0
tokens = math.min(capacity, tokens + math.max(now - at, 0) * rate)
local wait = 0
if tokens >= 1 then
    tokens = tokens - 1
else
    turn = math.max(now + (1 - tokens) / rate, turn + 1 / rate)
    turn = math.min(turn, now + max_wait)
    -- never 0 (printed to the microsecond below): 0 means a token was taken
    wait = math.max(turn - now, 0.000001)
end
local idle = math.max((capacity - tokens) / rate, turn - now, 0)
-- tokens at full precision: rounded up, a token could come early
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens),
           'at', string.format('%.6f', now), 'turn', string.format('%.6f', turn))
redis.call('PEXPIRE', KEYS[1], math.ceil(idle * 1000) + 1)
return string.format('%.6f', wait)
"""

def _take_script() -> Any:
    return script(_TAKE)


def burst(per_minute: int) -> int:
    """The tokens a full bucket holds at ``per_minute`` sends a minute."""
    return max(1, per_minute * BURST_SECONDS // 60)


def bucket_key(account_id: int) -> str:
    return key("bucket", str(account_id))


def take(account_id: int, per_minute: int, *, max_wait: float = 3600.0) -> float:
    """Take a token from the account's bucket: 0.0 if one was taken; otherwise none is
    taken and the result (always > 0) is the seconds until this caller's turn: when the
    next token refills, or one interval after the turn of the caller told to wait before
    it, but never more than ``max_wait``.

    Raises ValueError for a rate below one a minute, and redis.RedisError when Redis
    cannot answer (the caller must then not send: it has no token).
    """
    if per_minute < 1:
        raise ValueError(f"a sending rate is at least 1 a minute, not {per_minute}")
    if max_wait <= 0:
        raise ValueError(f"max_wait must be positive, not {max_wait}")
    answer = _take_script()(keys=[bucket_key(account_id)],
                            args=[burst(per_minute), per_minute / 60, max_wait])
    return float(cast(bytes, answer))
