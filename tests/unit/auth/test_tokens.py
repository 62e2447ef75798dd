"""The token manager against the real Redis and database: one refresh per herd."""

from __future__ import annotations

import threading
import time

import pytest
from cryptography.fernet import Fernet

from mailrelay.auth import accounts
from mailrelay.auth.credentials import Credentials
from mailrelay.auth.tokens import TokenGrant, TokenManager
from mailrelay.errors import ProviderError


@pytest.fixture
def account(clean_db: None, clean_redis: None, secret_key: str) -> Credentials:
    accounts.add("gmail", "owner@example.com", client_id="cid", client_secret="cs",
                 refresh_token="rt-1")
    return accounts.credentials("owner@example.com")


class Refresher:
    """Stands in for the provider's token endpoint: counts calls, can rotate or revoke."""

    def __init__(self, delay: float = 0.2, rotate: bool = False, revoked: bool = False) -> None:
        self.calls: list[str | None] = []
        self.delay, self.rotate, self.revoked = delay, rotate, revoked
        self.lock = threading.Lock()

    def __call__(self, creds: Credentials) -> TokenGrant:
        with self.lock:
            self.calls.append(creds.refresh_token)
            n = len(self.calls)
        time.sleep(self.delay)
        if self.revoked:
            raise ProviderError("auth_revoked", "revoked")
        return TokenGrant(f"at-{n}", time.time() + 3600, f"rt-{n + 1}" if self.rotate else None)


def test_a_herd_of_threads_makes_one_refresh(account: Credentials) -> None:
    manager, refresher = TokenManager(), Refresher()
    results: list[str] = []
    barrier = threading.Barrier(20)

    def take() -> None:
        barrier.wait()
        results.append(manager.get(account, refresher))

    threads = [threading.Thread(target=take) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert refresher.calls == ["rt-1"]
    assert results == ["at-1"] * 20
    assert manager.get(account, refresher) == "at-1"  # cached now


def test_a_rejected_token_is_refreshed_once(account: Credentials) -> None:
    manager, refresher = TokenManager(), Refresher(delay=0)
    first = manager.get(account, refresher)
    assert manager.get(account, refresher, stale=first) == "at-2"
    assert manager.get(account, refresher, stale=first) == "at-2"  # the newer one, no refresh
    assert len(refresher.calls) == 2


def test_a_rotated_refresh_token_is_stored_before_use(account: Credentials) -> None:
    manager, refresher = TokenManager(), Refresher(delay=0, rotate=True)
    manager.get(account, refresher)
    assert accounts.credentials(account.address).refresh_token == "rt-2"
    manager.forget(account.id)
    manager.get(account, refresher)
    assert refresher.calls == ["rt-1", "rt-2"]  # the second refresh used the stored one


def test_revocation_marks_the_account_and_stops_further_calls(account: Credentials) -> None:
    manager, refresher = TokenManager(), Refresher(delay=0, revoked=True)
    with pytest.raises(ProviderError) as err:
        manager.get(account, refresher)
    assert err.value.code == "auth_revoked"
    assert accounts.credentials(account.address).state == "reauth_required"
    for _ in range(10):
        with pytest.raises(ProviderError, match="auth_revoked"):
            manager.get(account, refresher)
    assert len(refresher.calls) == 1


def test_a_lost_tombstone_still_stops_the_refresh(account: Credentials) -> None:
    manager = TokenManager()
    accounts.set_state(account.id, "reauth_required")
    refresher = Refresher(delay=0)
    with pytest.raises(ProviderError, match="auth_revoked"):
        manager.get(account, refresher)
    assert refresher.calls == []


def test_cached_tokens_are_encrypted_in_redis(account: Credentials) -> None:
    manager = TokenManager()
    manager.get(account, Refresher(delay=0))
    raw = manager.redis.get(f"mailrelay:token:{account.id}")
    assert raw and b"at-1" not in raw


def test_a_new_key_cannot_read_old_cache_and_refreshes(account: Credentials,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from mailrelay.config import get_settings

    manager, refresher = TokenManager(), Refresher(delay=0)
    manager.get(account, refresher)
    old = get_settings().secret_key
    monkeypatch.setenv("MAILRELAY_SECRET_KEY", f"{Fernet.generate_key().decode()},{old}")
    get_settings.cache_clear()
    try:
        # The cache entry still decrypts through the old key (second in the ring).
        assert manager.get(account, refresher) == "at-1"
    finally:
        monkeypatch.setenv("MAILRELAY_SECRET_KEY", old)
        get_settings.cache_clear()


class ReconnectDuring(Refresher):
    """A token endpoint that answers while an operator reconnects the account."""

    def __call__(self, creds: Credentials) -> TokenGrant:
        accounts.reconnect(creds.address, client_id="cid", tenant=None, client_secret="cs",
                           refresh_token="rt-new-grant")
        return super().__call__(creds)


def test_a_refresh_racing_a_reconnect_keeps_the_new_grant(account: Credentials) -> None:
    manager, refresher = TokenManager(), ReconnectDuring(delay=0, rotate=True)
    assert manager.get(account, refresher) == "at-1"  # good for this one send
    # The rotated token of the replaced grant ("rt-2") did not overwrite the new grant, and
    # the replaced grant's access token was not cached: the next send refreshes anew.
    assert accounts.credentials(account.address).refresh_token == "rt-new-grant"
    manager.forget(account.id)
    later = Refresher(delay=0)
    manager.get(account, later)
    assert later.calls == ["rt-new-grant"]


def test_a_revocation_racing_a_reconnect_leaves_the_account_active(account: Credentials) -> None:
    manager, refresher = TokenManager(), ReconnectDuring(delay=0, revoked=True)
    with pytest.raises(ProviderError):
        manager.get(account, refresher)
    # The old grant was revoked, but the reconnect's new grant must not be marked revoked.
    assert accounts.credentials(account.address).state == "active"
    assert manager.get(account, Refresher(delay=0)) == "at-1"  # no tombstone left behind


def test_rotate_key_does_not_overwrite_a_refresh_stored_meanwhile(account: Credentials,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   secret_key: str) -> None:
    """rotate-key reads every secret and writes it back re-encrypted; a rotated refresh
    token stored between the read and the write must survive it."""
    from mailrelay.auth import crypto
    from mailrelay.config import get_settings
    from mailrelay.store import accounts as rows

    new_key = Fernet.generate_key().decode()
    monkeypatch.setenv("MAILRELAY_SECRET_KEY", f"{new_key},{secret_key}")
    get_settings.cache_clear()
    refreshed = threading.Event()

    def store_rotated_token() -> None:
        rows.set_values(account.id, refresh_token_enc=crypto.encrypt("rt-rotated"))
        refreshed.set()

    writer = threading.Thread(target=store_rotated_token)

    def reencrypt(token: bytes) -> bytes:
        if not writer.is_alive() and not refreshed.is_set():
            writer.start()  # a refresh lands while rotate-key holds what it read
            refreshed.wait(1.0)  # with the rows locked it cannot finish before the commit
        return crypto.rotate(token)

    try:
        rows.reencrypt_all(reencrypt)
        writer.join(10)
        assert refreshed.is_set()
        assert accounts.credentials(account.address).refresh_token == "rt-rotated"
    finally:
        get_settings.cache_clear()
