"""Sending accounts as the rest of mailrelay uses them: secrets encrypted on the way into
the store and decrypted on the way out, and every change that could leave a stale access
token in a cache (a new grant, a removal, new settings) followed by forgetting it.

The rows themselves are ``mailrelay.store.accounts``; only this module and the token
manager call it, so that no secret crosses the store's boundary in clear.
"""

from __future__ import annotations

from typing import Any

from mailrelay import provider_names
from mailrelay.auth import crypto
from mailrelay.auth.credentials import forget
from mailrelay.auth.credentials import load as credentials
from mailrelay.auth.tokens import manager
from mailrelay.retry import PARKED_CODE
from mailrelay.store import accounts as rows
from mailrelay.store.accounts import (
    STATES,
    UNSET,
    AccountExists,
    AccountNotFound,
    health,
    list_all,
    normalize_address,
    public,
    record_refresh,
    set_server,
    set_state,
)
from mailrelay.store.outbox import utcnow

__all__ = ["STATES", "UNSET", "AccountExists", "AccountNotFound", "add", "check_key", "configure",
           "credentials", "health", "list_all", "normalize_address", "public", "reconnect", "record_refresh",
           "remove", "replace_secrets", "resume_parked", "rotate_key", "set_server",
           "set_state"]


def add(provider: str, address: str, *, client_id: str | None = None, tenant: str | None = None,
        app_only: bool = False, rate_limit_per_minute: int | None = None,
        client_secret: str | None = None, refresh_token: str | None = None,
        html_policy: str | None = None, preview: bool = False) -> dict[str, Any]:
    """Register an account; its public row. With ``preview`` the same checks run (the
    provider, the address, the secrets encrypt, ``AccountExists``) and nothing is stored."""
    provider_names.check(provider)  # unknown provider: ValidationError with a hint
    now = utcnow()
    row = {"address": normalize_address(address), "provider": provider, "state": "active",
           "client_id": client_id, "tenant": tenant, "app_only": app_only,
           "rate_limit_per_minute": rate_limit_per_minute, "html_policy": html_policy,
           "created_at": now, "updated_at": now,
           "consecutive_failures": 0,
           "client_secret_enc": crypto.encrypt(client_secret) if client_secret else None,
           "refresh_token_enc": crypto.encrypt(refresh_token) if refresh_token else None}
    if preview:
        rows.check_free(str(row["address"]))
        return public(row)
    account_id = rows.insert_row(row)
    try:
        _forget_tokens(account_id)  # SQLite reuses ids: never inherit another's token
    except Exception:
        # Redis is away: take the row back, so that the add can simply be run again.
        rows.remove(str(row["address"]))
        raise
    return public(row)


def _forget_tokens(account_id: int) -> None:
    """Drop the cached access token and any revocation tombstone of this account id."""
    manager().reinstate(account_id)
    forget()


def replace_secrets(address: str, *, client_secret: str | None, refresh_token: str | None) -> int:
    """Store new secrets (a key nobody holds any more); returns the account id."""
    return _renew(address, client_secret_enc=crypto.encrypt(client_secret) if client_secret else None,
                  refresh_token_enc=crypto.encrypt(refresh_token) if refresh_token else None)


def reconnect(address: str, *, client_id: str, tenant: str | None, client_secret: str,
              refresh_token: str) -> int:
    """A new grant from consent for an existing account: new client, secrets, state active,
    failures forgotten. Returns the account id."""
    return _renew(address, client_id=client_id, tenant=tenant, app_only=False,
                  client_secret_enc=crypto.encrypt(client_secret),
                  refresh_token_enc=crypto.encrypt(refresh_token), consecutive_failures=0)


def _state_changed(provider: str, state: str) -> None:
    # Imported on use: the command line imports this module before `mailrelay worker`
    # chooses prometheus_client's storage.
    from mailrelay.metrics import ACCOUNT_STATE_CHANGES

    ACCOUNT_STATE_CHANGES.labels(provider=provider, state=state).inc()


def _renew(address: str, **values: Any) -> int:
    account_id = rows.renew(address, **values)
    _state_changed(rows.row_of(normalize_address(address)).provider, "active")
    _forget_tokens(account_id)  # lifts the revocation tombstone, drops the old access token
    return account_id


def resume_parked(account_id: int) -> list[tuple[str, str]]:
    """Make the messages parked on a revoked grant due now; their (id, provider) pairs."""
    return rows.resume_parked(account_id, PARKED_CODE)


def remove(address: str, *, force: bool = False, preview: bool = False) -> str:
    """Delete an account without messages; with messages, ``force`` disables it and erases
    its secrets (the history stays). Returns what was done, or with ``preview`` what would
    be (nothing changes)."""
    row = rows.row_of(normalize_address(address))
    provider = row.provider
    if preview:
        return rows.remove(address, force=force, preview=True)[0]
    # The cached token goes first: if Redis is away, nothing is removed and the command
    # can simply be run again (the other order would leave a row gone and a token kept).
    _forget_tokens(row.id)
    done, _account_id = rows.remove(address, force=force)
    if done == "disabled":
        _state_changed(provider, "disabled")
    return done


def rotate_key(*, preview: bool = False) -> int:
    """Re-encrypt every stored secret under the newest MAILRELAY_SECRET_KEY; returns the
    count. A preview decrypts and re-encrypts each in memory and stores nothing: an
    unreadable secret fails it as it would fail the real run."""
    return rows.reencrypt_all(crypto.rotate, preview=preview)


def check_key() -> None:
    """Raise ``crypto.SecretUnreadable`` (or ConfigError for a missing key) unless
    MAILRELAY_SECRET_KEY decrypts the newest stored secret; nothing stored, nothing to do."""
    token = rows.newest_secret()
    if token is not None:
        crypto.decrypt(token)


def configure(address: str, *, rate_limit_per_minute: int | None = UNSET,
              html_policy: str | None = UNSET, preview: bool = False) -> dict[str, Any]:
    """Per-account settings; None goes back to the default, UNSET leaves one as it is.
    With ``preview``: the account as it would be, nothing written or forgotten."""
    updated = rows.configure(address, rate_limit_per_minute=rate_limit_per_minute,
                             html_policy=html_policy, preview=preview)
    if preview:
        return updated
    forget(address.lower())
    return updated
