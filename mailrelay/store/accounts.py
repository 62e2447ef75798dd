"""Registered sending accounts. Secrets are stored encrypted and decrypted only here and
in mailrelay.auth; nothing that lists accounts shows them."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import and_, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from mailrelay import providers
from mailrelay.addressing import parse_mailbox
from mailrelay.auth import crypto
from mailrelay.auth.credentials import Credentials
from mailrelay.errors import ValidationError
from mailrelay.store.db import db_errors, get_engine
from mailrelay.store.models import ACCOUNTS, AUDIT, MESSAGES
from mailrelay.store.outbox import utcnow

accounts = ACCOUNTS

STATES = ("active", "reauth_required", "disabled")


class AccountExists(Exception):
    pass


class AccountNotFound(Exception):
    pass


def normalize_address(address: str) -> str:
    mailbox = parse_mailbox(address, field="address")
    if mailbox.name:
        raise ValidationError("invalid_address", "give the bare address, without a display name",
                              field="address")
    return mailbox.address.lower()


def add(provider: str, address: str, *, client_id: str | None = None, tenant: str | None = None,
        app_only: bool = False, rate_limit_per_minute: int | None = None,
        client_secret: str | None = None, refresh_token: str | None = None,
        html_policy: str | None = None) -> dict[str, Any]:
    providers.queue_for(provider)  # unknown provider: ValidationError with a hint
    now = utcnow()
    row = {"address": normalize_address(address), "provider": provider, "state": "active",
           "client_id": client_id, "tenant": tenant, "app_only": app_only,
           "rate_limit_per_minute": rate_limit_per_minute, "html_policy": html_policy,
           "created_at": now, "updated_at": now,
           "consecutive_failures": 0,
           "client_secret_enc": crypto.encrypt(client_secret) if client_secret else None,
           "refresh_token_enc": crypto.encrypt(refresh_token) if refresh_token else None}
    try:
        with db_errors(), get_engine().begin() as conn:
            inserted = conn.execute(insert(accounts).values(row)).inserted_primary_key
            account_id = inserted[0] if inserted else 0
    except IntegrityError:
        raise AccountExists(f"an account for {row['address']!s} exists already") from None
    _forget_tokens(int(account_id))  # SQLite reuses ids: never inherit another's token
    return public(row)


def _forget_tokens(account_id: int) -> None:
    """Drop the cached access token and any revocation tombstone of this account id."""
    from mailrelay.auth.credentials import forget
    from mailrelay.auth.tokens import manager

    manager().reinstate(account_id)
    forget()


def credentials(address: str) -> Credentials:
    with db_errors(), get_engine().connect() as conn:
        row = conn.execute(select(accounts).where(accounts.c.address == address.lower())).first()
    if row is None:
        raise AccountNotFound(f"no account {address}")
    return Credentials(
        id=row.id, address=row.address, provider=row.provider, state=row.state,
        client_id=row.client_id, tenant=row.tenant, app_only=bool(row.app_only),
        client_secret=crypto.decrypt(row.client_secret_enc) if row.client_secret_enc else None,
        refresh_token=crypto.decrypt(row.refresh_token_enc) if row.refresh_token_enc else None,
        rate_limit_per_minute=row.rate_limit_per_minute)


def _set(account_id: int, **values: Any) -> None:
    with db_errors(), get_engine().begin() as conn:
        conn.execute(update(accounts).where(accounts.c.id == account_id)
                     .values(updated_at=utcnow(), **values))


def set_state(account_id: int, state: str) -> None:
    if state not in STATES:
        raise ValueError(f"unknown account state {state!r}")
    _set(account_id, state=state)


def store_refresh_token(account_id: int, refresh_token: str) -> None:
    """Persist a rotated refresh token; called before the access token that came with it is used."""
    _set(account_id, refresh_token_enc=crypto.encrypt(refresh_token))


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


def _renew(address: str, **values: Any) -> int:
    """Give the account new secrets and make it active again; returns its id."""
    address = address.lower()
    with db_errors(), get_engine().begin() as conn:
        found = conn.execute(select(accounts.c.id).where(accounts.c.address == address)).scalar()
        if found is None:
            raise AccountNotFound(f"no account {address}")
        conn.execute(update(accounts).where(accounts.c.id == found)
                     .values(state="active", updated_at=utcnow(), **values))
    _forget_tokens(int(found))  # lifts the revocation tombstone, drops the old access token
    return int(found)


def set_server(address: str, server: str) -> None:
    """Point an account at another server (SMTP accounts keep it in ``tenant``)."""
    with db_errors(), get_engine().begin() as conn:
        conn.execute(update(accounts).where(accounts.c.address == address.lower())
                     .values(tenant=server, updated_at=utcnow()))


def resume_parked(account_id: int) -> list[tuple[str, str]]:
    """Make the messages parked on a revoked grant due now; their (id, provider) pairs,
    for the caller to enqueue (the reconciler would find them too, a minute later)."""
    from mailrelay.retry import PARKED_CODE

    m = MESSAGES.c
    now = utcnow()
    parked = and_(m.account_id == account_id, m.state == "retrying", m.error_code == PARKED_CODE)
    with db_errors(), get_engine().begin() as conn:
        rows = conn.execute(select(m.id, m.provider).where(parked)).all()
        if rows:
            conn.execute(update(MESSAGES).where(parked).values(next_attempt_at=now))
            conn.execute(insert(AUDIT), [
                {"message_id": row.id, "at": now, "actor": "reconnect", "action": "resume",
                 "from_state": "retrying", "to_state": "retrying",
                 "reason": "account reconnected; parked message due now"} for row in rows])
    return [(row.id, row.provider) for row in rows]


def record_refresh(account_id: int, at: dt.datetime | None = None) -> None:
    _set(account_id, last_refresh_at=at or utcnow())


def remove(address: str, *, force: bool = False) -> str:
    """Delete an account without messages; with messages, ``force`` disables it and erases
    its secrets (the history stays). Returns what was done."""
    address = normalize_address(address)
    with db_errors(), get_engine().begin() as conn:
        row = conn.execute(select(accounts.c.id).where(accounts.c.address == address)).first()
        if row is None:
            raise AccountNotFound(f"no account {address}")
        used = conn.execute(select(func.count()).select_from(MESSAGES)
                            .where(MESSAGES.c.account_id == row.id)).scalar()
        if not used:
            conn.execute(delete(accounts).where(accounts.c.id == row.id))
            done = "removed"
        elif not force:
            raise AccountExists(f"{address} has {used} messages; --force disables it and erases "
                                "its secrets, keeping the history")
        else:
            conn.execute(update(accounts).where(accounts.c.id == row.id).values(
                state="disabled", client_secret_enc=None, refresh_token_enc=None,
                updated_at=utcnow()))
            done = "disabled"
    _forget_tokens(row.id)
    return done


def rotate_key() -> int:
    """Re-encrypt every stored secret under the newest MAILRELAY_SECRET_KEY; returns the count."""
    count = 0
    with db_errors(), get_engine().begin() as conn:
        rows = conn.execute(select(accounts.c.id, accounts.c.client_secret_enc,
                                   accounts.c.refresh_token_enc)).all()
        for row in rows:
            values = {}
            if row.client_secret_enc:
                values["client_secret_enc"] = crypto.rotate(row.client_secret_enc)
            if row.refresh_token_enc:
                values["refresh_token_enc"] = crypto.rotate(row.refresh_token_enc)
            if values:
                conn.execute(update(accounts).where(accounts.c.id == row.id).values(values))
                count += len(values)
    return count


def list_all() -> list[dict[str, Any]]:
    with db_errors(), get_engine().connect() as conn:
        rows = conn.execute(select(accounts).order_by(accounts.c.address)).mappings().all()
    return [public(dict(row)) for row in rows]


def public(row: dict[str, Any]) -> dict[str, Any]:
    """What may be shown of an account: no secret."""
    def iso(value: Any) -> str | None:
        return value.isoformat() if value else None

    return {"address": row["address"], "provider": row["provider"], "state": row["state"],
            "client_id": row.get("client_id"), "tenant": row.get("tenant"),
            "app_only": bool(row.get("app_only")),
            "rate_limit_per_minute": row.get("rate_limit_per_minute"),
            "created_at": iso(row.get("created_at")),
            "last_success_at": iso(row.get("last_success_at")),
            "last_refresh_at": iso(row.get("last_refresh_at")),
            "consecutive_failures": row.get("consecutive_failures", 0),
            "last_failure_at": iso(row.get("last_failure_at")),
            "last_error_code": row.get("last_error_code"),
            "last_error_detail": row.get("last_error_detail"),
            "html_policy": row.get("html_policy")}


def health(address: str) -> dict[str, Any]:
    with db_errors(), get_engine().connect() as conn:
        row = conn.execute(select(accounts).where(accounts.c.address == address.lower())).mappings().first()
    if row is None:
        raise AccountNotFound(f"no account {address}")
    return public(dict(row))


UNSET: Any = object()


def configure(address: str, *, rate_limit_per_minute: int | None = UNSET,
              html_policy: str | None = UNSET) -> dict[str, Any]:
    """Per-account settings; None goes back to the default, UNSET leaves one as it is."""
    values: dict[str, Any] = {}
    if rate_limit_per_minute is not UNSET:
        values["rate_limit_per_minute"] = rate_limit_per_minute
    if html_policy is not UNSET:
        if html_policy not in (None, "off", "sanitize"):
            raise ValueError(f"unknown HTML policy {html_policy!r}")
        values["html_policy"] = html_policy
    with db_errors(), get_engine().begin() as conn:
        done = conn.execute(update(accounts).where(accounts.c.address == address.lower())
                            .values(updated_at=utcnow(), **values)).rowcount
    if not done:
        raise AccountNotFound(f"no account {address}")
    from mailrelay.auth.credentials import forget

    forget(address.lower())
    return health(address)
