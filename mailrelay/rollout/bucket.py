"""A sender's bucket: 0-9999 from a salted SHA-256 of the account address.

The formula is a contract: the same salt and address give the same bucket in every
process, after restarts and across versions, so a sender admitted at 5% stays admitted
at 10% (buckets under 500 are under 1000 too). A new salt reshuffles on purpose.

    bucket = int.from_bytes(sha256(f"{salt}:{address}").digest()[:8], "big") % 10000

with ``address`` lower-cased, as accounts are stored. 2**64 is not a multiple of 10000,
but the bias (under 1e-15) is far below anything a percentage can show.
"""

from __future__ import annotations

import hashlib
import secrets

BUCKETS = 10_000  # one bucket per basis point


def bucket(salt: str, address: str) -> int:
    digest = hashlib.sha256(f"{salt}:{address.strip().lower()}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def new_salt() -> str:
    """A salt for a new rollout, so that two rollouts do not admit the same senders."""
    return secrets.token_hex(8)
