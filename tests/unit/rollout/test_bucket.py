"""Sticky, salted bucketing: stable, uniform, reshuffled by a new salt."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections import Counter

from mailrelay.rollout.bucket import BUCKETS, bucket, new_salt

SENDERS = [f"user{i}@tenant{i % 97}.example" for i in range(100_000)]


def test_the_formula_is_fixed_across_versions() -> None:
    # Written out independently of the module: changing the formula moves every sender.
    digest = hashlib.sha256(b"s4lt:ada@example.com").digest()
    assert bucket("s4lt", "ada@example.com") == int.from_bytes(digest[:8], "big") % 10_000
    assert bucket("s4lt", "ada@example.com") == 8101
    assert bucket("s4lt", " Ada@Example.COM ") == bucket("s4lt", "ada@example.com")


def test_stable_across_processes_with_other_hash_seeds() -> None:
    code = ("from mailrelay.rollout.bucket import bucket; "
            "print([bucket('k', f'user{i}@x.example') for i in range(50)])")
    outputs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True, env={"PYTHONHASHSEED": seed}).stdout
               for seed in ("1", "2", "random")}
    assert outputs == {str([bucket("k", f"user{i}@x.example") for i in range(50)]) + "\n"}


def test_uniform_within_one_percent_over_100000_senders() -> None:
    buckets = [bucket("uniformity", address) for address in SENDERS]
    assert min(buckets) >= 0 and max(buckets) < BUCKETS
    counts = Counter(b // 100 for b in buckets)  # one bin per percent
    admitted = 0
    for percent in range(1, 101):
        admitted += counts[percent - 1]
        share = 100 * admitted / len(SENDERS)
        assert abs(share - percent) < 1.0, (percent, share)


def test_a_sender_admitted_at_a_step_stays_admitted_at_the_next() -> None:
    buckets = {address: bucket("steps", address) for address in SENDERS[:5000]}
    at_5 = {a for a, b in buckets.items() if b < 500}
    at_10 = {a for a, b in buckets.items() if b < 1000}
    assert at_5 and at_5 < at_10


def test_a_new_salt_reshuffles() -> None:
    first = {a for a in SENDERS if bucket("first", a) < 2500}
    second = {a for a in SENDERS if bucket("second", a) < 2500}
    both = len(first & second) / len(SENDERS)
    # Independent draws: about 25% × 25% = 6.25% are admitted under both salts.
    assert 0.055 < both < 0.07, both
    assert new_salt() != new_salt() and len(new_salt()) == 16
