"""The per-mailbox token bucket against the real Redis: burst, refill, turns, expiry, bound."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from mailrelay import ratelimit
from mailrelay.redis_client import get_redis

# 600 a minute: 10 tokens a second, a burst of 100, one token every 0.1 s.
RATE = 600
INTERVAL = 60 / RATE


@pytest.fixture(autouse=True)
def _empty(clean_redis: None) -> None:
    return None


def _drain(account_id: int, per_minute: int = RATE) -> float:
    """Take tokens until the bucket refuses; return the first refusal's wait. At least the
    burst is taken (more if the machine is slow enough for a token to refill meanwhile)."""
    taken = 0
    while (wait := ratelimit.take(account_id, per_minute)) == 0.0:
        taken += 1
    assert taken >= ratelimit.burst(per_minute)
    return wait


def test_the_burst_is_ten_seconds_of_the_rate_and_at_least_one() -> None:
    assert ratelimit.burst(60) == 10
    assert ratelimit.burst(150) == 25  # Gmail's documented rate
    assert ratelimit.burst(30) == 5  # Microsoft's
    assert ratelimit.burst(5) == 1
    assert ratelimit.burst(1) == 1


def test_a_full_bucket_lets_exactly_the_burst_through_at_once() -> None:
    passed = [ratelimit.take(1, RATE) for _ in range(ratelimit.burst(RATE))]
    assert passed == [0.0] * ratelimit.burst(RATE)


def test_an_empty_bucket_says_when_the_next_token_is_there() -> None:
    wait = _drain(1)
    assert 0 < wait <= INTERVAL
    time.sleep(wait + 0.01)
    assert ratelimit.take(1, RATE) == 0.0


def test_a_caller_told_to_wait_takes_nothing() -> None:
    _drain(1)
    for _ in range(20):
        assert ratelimit.take(1, RATE) > 0
    time.sleep(INTERVAL * 1.1)
    # Twenty refusals took no token: the one that refilled is there.
    assert ratelimit.take(1, RATE) == 0.0


def test_the_bucket_refills_at_the_rate() -> None:
    _drain(1)  # less than one token left
    time.sleep(INTERVAL * 2.5)  # 2.5 more
    passed = 0
    while ratelimit.take(1, RATE) == 0.0:
        passed += 1
    assert passed in (2, 3)


def test_waiters_get_turns_one_interval_apart_up_to_max_wait() -> None:
    first = _drain(1)
    waits = [first] + [ratelimit.take(1, RATE, max_wait=0.35) for _ in range(4)]
    steps = [round(b - a, 2) for a, b in itertools.pairwise(waits)]
    assert steps[:2] == [INTERVAL, INTERVAL]
    assert max(waits) == pytest.approx(0.35, abs=0.005)  # no turn beyond max_wait


def test_buckets_are_per_account() -> None:
    _drain(1)
    assert ratelimit.take(1, RATE) > 0
    assert ratelimit.take(2, RATE) == 0.0


def test_an_idle_bucket_expires_once_full() -> None:
    redis = get_redis()
    assert ratelimit.take(1, 6000) == 0.0  # 100 a second: refilled in 10 ms
    assert 0 < redis.pttl(ratelimit.bucket_key(1)) <= 12
    _drain(2)  # 100 tokens to refill at 10 a second
    assert redis.pttl(ratelimit.bucket_key(2)) >= 9_000
    time.sleep(0.05)
    assert redis.exists(ratelimit.bucket_key(1)) == 0


def test_a_rate_below_one_a_minute_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ratelimit.take(1, 0)


def test_threads_never_take_more_than_the_bucket_allows() -> None:
    per_minute = 1200  # 20 a second, a burst of 200
    rate = per_minute / 60
    burst = ratelimit.burst(per_minute)
    taken: list[float] = []
    lock = threading.Lock()
    run = 1.5
    stop = time.monotonic() + run

    def hammer() -> None:
        while time.monotonic() < stop:
            if ratelimit.take(7, per_minute) == 0.0:
                with lock:
                    taken.append(time.monotonic())
            time.sleep(0.001)

    started = time.monotonic()
    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    # Over the whole run the bound is exact: the run's span holds every take's Redis time.
    assert len(taken) <= burst + rate * elapsed
    # And the bucket is not stingy: what it allowed was taken, give or take a token.
    assert len(taken) >= burst + rate * run - 2
    # In every window between two takes. Each is stamped after its call returned, which
    # can make a window look shorter than it was at Redis: two tokens of slack for that.
    taken.sort()
    for i, start in enumerate(taken):
        for j in range(i, len(taken)):
            assert j - i + 1 <= burst + rate * (taken[j] - start) + 2
