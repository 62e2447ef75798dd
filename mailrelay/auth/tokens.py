"""Access tokens for every OAuth provider: a Redis cache and a single-flight refresh.

Per account, Redis holds
  ``mailrelay:token:<id>``        the access token, Fernet-encrypted, expiring
                                  MAILRELAY_TOKEN_REFRESH_MARGIN seconds before the token;
  ``mailrelay:token:<id>:revoked`` a tombstone once the grant is revoked: later messages
                                  fail at once, without asking the token endpoint;
  ``mailrelay:lock:token:<id>``   the refresh lock (redis-py Lock).

Each process also keeps the token it last used for LOCAL_SECONDS, so most sends touch
neither Redis nor the token endpoint. A herd of workers meeting a missing or rejected
token makes one refresh: the first to take the lock (non-blocking) re-reads the cache,
refreshes, stores a rotated refresh token in the database *before* anything uses the
new access token, and writes the cache only while it still holds the lock. The others
do not queue on the lock: they re-read the cache every 50-150 ms (jittered, so they do
not wake together) until the new token appears or the wait bound passes.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import redis
from redis.exceptions import LockError

from mailrelay.auth import credentials, crypto
from mailrelay.auth.credentials import Credentials
from mailrelay.config import get_settings
from mailrelay.errors import ProviderError
from mailrelay.logctx import get_logger
from mailrelay.redis_client import get_redis, key
from mailrelay.store import accounts
from mailrelay.store.outbox import utcnow

log = get_logger(__name__)


@dataclass(frozen=True)
class TokenGrant:
    access_token: str
    expires_at: float  # epoch seconds
    refresh_token: str | None = None  # set when the provider rotated it


Refresher = Callable[[Credentials], TokenGrant]

# How long a process reuses a token without asking Redis. Safe because a token that stops
# working (expired early, grant revoked) gets a 401, and the renewal after a 401 always
# reads Redis, where a revocation tombstone stops it. Far below any token's lifetime.
LOCAL_SECONDS = 30.0


def _keys(account_id: int) -> tuple[str, str, str]:
    base = key("token", str(account_id))
    return base, base + ":revoked", key("lock", "token", str(account_id))


class TokenManager:
    def __init__(self, client: redis.Redis | None = None, *, margin: float | None = None,
                 lock_timeout: float | None = None, wait_timeout: float | None = None) -> None:
        settings = get_settings()
        self.redis = client or get_redis()
        self.margin = settings.token_refresh_margin if margin is None else margin
        # Longer than the whole refresh, so that a live refresher never loses the lock:
        # google-auth tries the token endpoint up to three times on a 5xx.
        self.lock_timeout = lock_timeout or 4 * settings.provider_timeout + 15
        self.wait_timeout = wait_timeout or self.lock_timeout + 10
        # token, until (monotonic): saves the Redis read on most sends; see LOCAL_SECONDS.
        self._local: dict[int, tuple[str, float]] = {}

    # -- what adapters use ----------------------------------------------------------------
    def source(self, account: Credentials, refresher: Refresher) -> AccountTokens:
        return AccountTokens(self, account, refresher)

    def get(self, account: Credentials, refresher: Refresher, *, stale: str | None = None) -> str:
        """A valid access token; ``stale`` is one the provider just rejected."""
        local = self._local.get(account.id)
        if local is not None and local[0] != stale and time.monotonic() < local[1]:
            return local[0]
        cached = self._read(account.id)
        if cached is None or cached == stale:
            cached = self._refresh(account, refresher, stale)
        self._local[account.id] = (cached, time.monotonic() + LOCAL_SECONDS)
        return cached

    # -- administration ------------------------------------------------------------------
    def revoke(self, account_id: int) -> None:
        self._local.pop(account_id, None)
        token_key, revoked_key, _ = _keys(account_id)
        pipe = self.redis.pipeline()
        pipe.delete(token_key)
        pipe.set(revoked_key, "1")
        pipe.execute()

    def reinstate(self, account_id: int) -> None:
        """After a reconnect: forget the tombstone and any cached token."""
        self._local.pop(account_id, None)
        token_key, revoked_key, _ = _keys(account_id)
        self.redis.delete(token_key, revoked_key)

    def forget(self, account_id: int) -> None:
        self._local.pop(account_id, None)
        self.redis.delete(_keys(account_id)[0])

    # -- internals -----------------------------------------------------------------------
    def _read(self, account_id: int) -> str | None:
        token_key, revoked_key, _ = _keys(account_id)
        raw, revoked = cast(list[Any], self.redis.mget(token_key, revoked_key))
        if revoked:
            raise ProviderError("auth_revoked", "the grant was revoked; reconnect the account")
        if not raw:
            return None
        try:
            return str(json.loads(crypto.decrypt(raw))["t"])
        except (crypto.SecretUnreadable, ValueError, KeyError):
            return None  # written under a key no longer configured: refresh

    def _refresh(self, account: Credentials, refresher: Refresher, stale: str | None) -> str:
        # Imported here, where a refresh begins: the command line imports this module,
        # and must not load prometheus_client before `mailrelay worker` sets it up.
        from mailrelay.metrics import TOKEN_LOCK_WAIT

        token_key, _, lock_key = _keys(account.id)
        started = time.monotonic()
        deadline = started + self.wait_timeout
        waited = False
        while True:
            lock = self.redis.lock(lock_key, timeout=self.lock_timeout)
            if lock.acquire(blocking=False):
                if waited:
                    TOKEN_LOCK_WAIT.labels(provider=account.provider).observe(
                        time.monotonic() - started)
                try:
                    cached = self._read(account.id)  # someone may have finished just before
                    if cached is not None and cached != stale:
                        return cached
                    return self._refresh_locked(account, refresher, lock, token_key,
                                                kind="rejected" if stale else "expiring")
                finally:
                    # LockError: it expired while refreshing; the token is still good.
                    with contextlib.suppress(LockError):
                        lock.release()
            waited = True
            time.sleep(random.uniform(0.05, 0.15))  # noqa: S311  # jitter, not a secret
            cached = self._read(account.id)
            if cached is not None and cached != stale:
                TOKEN_LOCK_WAIT.labels(provider=account.provider).observe(
                    time.monotonic() - started)
                return cached
            if time.monotonic() > deadline:
                TOKEN_LOCK_WAIT.labels(provider=account.provider).observe(
                    time.monotonic() - started)
                raise ProviderError("network_error", "another worker's token refresh did not finish "
                                    "in time")

    def _refresh_locked(self, account: Credentials, refresher: Refresher, lock: Any,
                        token_key: str, *, kind: str) -> str:
        # The row, not the cache: another process may have stored a rotated refresh token.
        try:
            fresh = credentials.load(account.address)
        except accounts.AccountNotFound:
            raise ProviderError("unknown_account", "the account was removed") from None
        if fresh.state == "reauth_required":  # the tombstone was lost (Redis restarted)
            self.revoke(account.id)
            raise ProviderError("auth_revoked", "the account must be reconnected")
        # Every write below is conditional on the grant this refresh used still being the
        # account's: a reconnect may store a new grant while the token endpoint answers.
        same_grant = credentials.holds_grant(fresh.refresh_token)
        from mailrelay.metrics import ACCOUNT_STATE_CHANGES, TOKEN_REFRESH_FAILURES, TOKEN_REFRESHES

        TOKEN_REFRESHES.labels(provider=account.provider, kind=kind).inc()
        try:
            grant = refresher(fresh)
        except ProviderError as err:
            TOKEN_REFRESH_FAILURES.labels(provider=account.provider, code=err.code).inc()
            if err.code == "auth_revoked":
                if accounts.set_values_if(account.id, same_grant, state="reauth_required"):
                    ACCOUNT_STATE_CHANGES.labels(provider=account.provider,
                                                 state="reauth_required").inc()
                    self.revoke(account.id)
                    log.warning("grant revoked; account marked reauth_required")
                else:
                    log.warning("the revoked grant was replaced by a reconnect meanwhile; "
                                "the account stays as the reconnect left it")
            raise
        values: dict[str, Any] = {"last_refresh_at": utcnow()}
        if grant.refresh_token and grant.refresh_token != fresh.refresh_token:
            values["refresh_token_enc"] = crypto.encrypt(grant.refresh_token)
        if not accounts.set_values_if(account.id, same_grant, **values):
            # The token serves this one send but is not cached: it belongs to a grant the
            # account no longer holds, and its rotated refresh token must not replace the
            # new grant's.
            log.warning("the account was reconnected during a token refresh; the new grant "
                        "is kept and this token is not cached")
            return grant.access_token
        ttl = int(grant.expires_at - time.time() - self.margin)
        if ttl > 0 and lock.owned():
            payload = crypto.encrypt(json.dumps({"t": grant.access_token, "exp": grant.expires_at}))
            self.redis.set(token_key, payload, ex=ttl)
        return grant.access_token


@dataclass
class AccountTokens:
    """The TokenSource handed to an adapter for one send."""

    manager: TokenManager
    account: Credentials
    refresher: Refresher

    def get(self) -> str:
        return self.manager.get(self.account, self.refresher)

    def renew(self, rejected: str) -> str:
        """The provider refused ``rejected``: refresh once (or take a newer cached token)."""
        return self.manager.get(self.account, self.refresher, stale=rejected)


_managers: dict[int, TokenManager] = {}


def manager() -> TokenManager:
    import os

    found = _managers.get(os.getpid())
    if found is None:
        found = _managers[os.getpid()] = TokenManager()
    return found
