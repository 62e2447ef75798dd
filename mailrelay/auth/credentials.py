"""An account's credentials as the delivery path sees them, with a short in-process cache.

Reading and decrypting the account row for every delivery would cost a database round
trip each time; a cache of a few seconds removes it. What must never be stale is
re-read where it matters: revocation is a Redis tombstone checked on every token read,
and a refresh re-reads the row (a rotated refresh token may have been stored by another
process) under the refresh lock.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass

from mailrelay.auth import crypto
from mailrelay.auth.crypto import SecretUnreadable
from mailrelay.errors import ProviderError
from mailrelay.store import accounts as rows
from mailrelay.store.accounts import AccountNotFound

CACHE_SECONDS = 30.0


@dataclass(frozen=True)
class Credentials:
    """What a provider needs to act for one account. Secrets are in clear: memory only."""

    id: int
    address: str
    provider: str
    state: str
    client_id: str | None
    tenant: str | None
    app_only: bool
    client_secret: str | None
    refresh_token: str | None
    rate_limit_per_minute: int | None

    def __repr__(self) -> str:  # never a secret in a log line or a traceback
        return f"Credentials(id={self.id}, provider={self.provider!r}, state={self.state!r})"


_cache: dict[str, tuple[float, Credentials]] = {}


def load(address: str) -> Credentials:
    """The account's credentials read from its row now, secrets decrypted."""
    row = rows.row_of(address)
    return Credentials(
        id=row.id, address=row.address, provider=row.provider, state=row.state,
        client_id=row.client_id, tenant=row.tenant, app_only=bool(row.app_only),
        client_secret=crypto.decrypt(row.client_secret_enc) if row.client_secret_enc else None,
        refresh_token=crypto.decrypt(row.refresh_token_enc) if row.refresh_token_enc else None,
        rate_limit_per_minute=row.rate_limit_per_minute)


def holds_grant(refresh_token: str | None) -> Callable[[bytes | None], bool]:
    """A test of the stored (encrypted) refresh token: is it still ``refresh_token``?
    Compared in clear, so that a `rotate-key` re-encryption is the same grant."""
    def test(stored: bytes | None) -> bool:
        if stored is None or refresh_token is None:
            return stored is None and refresh_token is None
        try:
            return hmac.compare_digest(crypto.decrypt(stored), refresh_token)
        except SecretUnreadable:
            return False
    return test


def cached(address: str) -> Credentials:
    """The account's credentials, at most CACHE_SECONDS old."""
    now = time.monotonic()
    hit = _cache.get(address)
    if hit is not None and now - hit[0] < CACHE_SECONDS:
        return hit[1]
    creds = load(address)
    _cache[address] = (now, creds)
    return creds


def sendable(address: str, provider: str) -> Credentials:
    """The account's credentials, or the ProviderError that says why it cannot send now."""
    try:
        account = cached(address)
        if account.state != "active":
            # A refusal is checked against the row, not the cache: a reconnect made in
            # another process must resume this account's messages at once.
            forget(address)
            account = cached(address)
    except AccountNotFound:
        raise ProviderError("unknown_account", "the account was removed", provider=provider) from None
    except SecretUnreadable as err:
        raise ProviderError("invalid_credentials", str(err), provider=provider) from None
    if account.state == "disabled":
        raise ProviderError("account_disabled", "the account is disabled", provider=provider)
    if account.state == "reauth_required":
        raise ProviderError("auth_revoked", "the account must be reconnected", provider=provider)
    return account


def forget(address: str | None = None) -> None:
    if address is None:
        _cache.clear()
    else:
        _cache.pop(address, None)
