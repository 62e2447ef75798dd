"""Registered sending accounts as rows. Secrets arrive here already encrypted and leave
encrypted: encryption, decryption and the token cache belong to ``mailrelay.auth.accounts``,
which every caller outside the store goes through."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from sqlalchemy import and_, delete, func, insert, select, update
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError

from mailrelay.addressing import parse_mailbox
from mailrelay.errors import ValidationError
from mailrelay.store.db import db_errors, get_engine
from mailrelay.store.models import ACCOUNTS, AUDIT, MESSAGES
from mailrelay.store.outbox import utcnow

accounts = ACCOUNTS

STATES = ("active", "reauth_required", "disabled")
SECRET_COLUMNS = ("client_secret_enc", "refresh_token_enc")


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


def insert_row(row: dict[str, Any]) -> int:
    """Insert a new account row; its id. ``AccountExists`` if the address is taken."""
    try:
        with db_errors(), get_engine().begin() as conn:
            inserted = conn.execute(insert(accounts).values(row)).inserted_primary_key
    except IntegrityError:
        raise AccountExists(f"an account for {row['address']!s} exists already") from None
    return int(inserted[0]) if inserted else 0


def check_free(address: str) -> None:
    """``AccountExists`` if ``address`` (normalized) is taken, as ``insert_row`` would say."""
    with db_errors(), get_engine().connect() as conn:
        taken = conn.execute(select(accounts.c.id).where(accounts.c.address == address)).first()
    if taken is not None:
        raise AccountExists(f"an account for {address} exists already")


def row_of(address: str) -> Row[Any]:
    """The account's whole row, secrets still encrypted."""
    with db_errors(), get_engine().connect() as conn:
        row = conn.execute(select(accounts).where(accounts.c.address == address.lower())).first()
    if row is None:
        raise AccountNotFound(f"no account {address}")
    return row


def set_values(account_id: int, **values: Any) -> None:
    with db_errors(), get_engine().begin() as conn:
        conn.execute(update(accounts).where(accounts.c.id == account_id)
                     .values(updated_at=utcnow(), **values))


def set_values_if(account_id: int, grant_is: Callable[[bytes | None], bool], **values: Any) -> bool:
    """Set ``values`` only while the account still holds the grant its caller acted on:
    ``grant_is`` is shown the stored refresh token (encrypted) with the row locked, and
    nothing is written unless it says yes. A refresh that ran on a grant which a
    reconnect replaced meanwhile must neither store its rotated token over the new grant
    nor mark the new grant revoked. False when nothing was written."""
    with db_errors(), get_engine().begin() as conn:
        stored = conn.execute(select(accounts.c.refresh_token_enc)
                              .where(accounts.c.id == account_id).with_for_update()).first()
        if stored is None or not grant_is(stored.refresh_token_enc):
            return False
        conn.execute(update(accounts).where(accounts.c.id == account_id)
                     .values(updated_at=utcnow(), **values))
    return True


def set_state(account_id: int, state: str) -> None:
    if state not in STATES:
        raise ValueError(f"unknown account state {state!r}")
    set_values(account_id, state=state)


def record_refresh(account_id: int, at: dt.datetime | None = None) -> None:
    set_values(account_id, last_refresh_at=at or utcnow())


def renew(address: str, **values: Any) -> int:
    """Give the account new values (secrets, client) and make it active again; its id."""
    address = address.lower()
    with db_errors(), get_engine().begin() as conn:
        found = conn.execute(select(accounts.c.id).where(accounts.c.address == address)).scalar()
        if found is None:
            raise AccountNotFound(f"no account {address}")
        conn.execute(update(accounts).where(accounts.c.id == found)
                     .values(state="active", updated_at=utcnow(), **values))
    return int(found)


def set_server(address: str, server: str) -> None:
    """Point an account at another server (SMTP accounts keep it in ``tenant``)."""
    with db_errors(), get_engine().begin() as conn:
        conn.execute(update(accounts).where(accounts.c.address == address.lower())
                     .values(tenant=server, updated_at=utcnow()))


def resume_parked(account_id: int, code: str) -> list[tuple[str, str]]:
    """Make the account's messages parked with ``code`` due now; their (id, provider)
    pairs, for the caller to enqueue (the reconciler would find them too, a minute later)."""
    m = MESSAGES.c
    now = utcnow()
    parked = and_(m.account_id == account_id, m.state == "retrying", m.error_code == code)
    with db_errors(), get_engine().begin() as conn:
        rows = conn.execute(select(m.id, m.provider).where(parked)).all()
        if rows:
            conn.execute(update(MESSAGES).where(parked).values(next_attempt_at=now))
            conn.execute(insert(AUDIT), [
                {"message_id": row.id, "at": now, "actor": "reconnect", "action": "resume",
                 "from_state": "retrying", "to_state": "retrying",
                 "reason": "account reconnected; parked message due now"} for row in rows])
    return [(row.id, row.provider) for row in rows]


def remove(address: str, *, force: bool = False, preview: bool = False) -> tuple[str, int]:
    """Delete an account without messages; with messages, ``force`` disables it and erases
    its secrets (the history stays). Returns what was done (with ``preview``: what would be,
    nothing written) and the account's id."""
    address = normalize_address(address)
    with db_errors(), get_engine().begin() as conn:
        row = conn.execute(select(accounts.c.id).where(accounts.c.address == address)).first()
        if row is None:
            raise AccountNotFound(f"no account {address}")
        used = conn.execute(select(func.count()).select_from(MESSAGES)
                            .where(MESSAGES.c.account_id == row.id)).scalar()
        if not used:
            if not preview:
                conn.execute(delete(accounts).where(accounts.c.id == row.id))
            done = "removed"
        elif not force:
            raise AccountExists(f"{address} has {used} messages; --force disables it and erases "
                                "its secrets, keeping the history")
        else:
            if not preview:
                conn.execute(update(accounts).where(accounts.c.id == row.id).values(
                    state="disabled", client_secret_enc=None, refresh_token_enc=None,
                    updated_at=utcnow()))
            done = "disabled"
    return done, int(row.id)


def reencrypt_all(reencrypt: Callable[[bytes], bytes], *, preview: bool = False) -> int:
    """Pass every stored secret through ``reencrypt`` in one transaction; the count. With
    ``preview`` each is re-encrypted in memory only (proving every one readable), and
    nothing is locked or written.

    The rows are locked as they are read: a token refresh storing a rotated refresh token
    meanwhile waits, then writes over the re-encrypted row, instead of being overwritten
    by the re-encryption of the token it replaced."""
    count = 0
    with db_errors(), get_engine().begin() as conn:
        query = select(accounts.c.id, *(accounts.c[name] for name in SECRET_COLUMNS))
        rows = conn.execute(query if preview else query.with_for_update()).all()
        for row in rows:
            values = {name: reencrypt(row._mapping[name]) for name in SECRET_COLUMNS
                      if row._mapping[name]}
            if values and preview:
                count += len(values)
            elif values:
                conn.execute(update(accounts).where(accounts.c.id == row.id).values(values))
                count += len(values)
    return count


def newest_secret() -> bytes | None:
    """The most recently stored encrypted secret of any account, or None: enough to tell
    whether the configured key is the one secrets are stored with now."""
    with_secret = (accounts.c.client_secret_enc.is_not(None)
                   | accounts.c.refresh_token_enc.is_not(None))
    with db_errors(), get_engine().connect() as conn:
        row = conn.execute(select(*(accounts.c[name] for name in SECRET_COLUMNS))
                           .where(with_secret).order_by(accounts.c.updated_at.desc())
                           .limit(1)).first()
    if row is None:
        return None
    return next(bytes(value) for value in row if value)


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
              html_policy: str | None = UNSET, preview: bool = False) -> dict[str, Any]:
    """Per-account settings; None goes back to the default, UNSET leaves one as it is.
    Returns the account as it is after, or with ``preview`` as it would be (nothing
    written; the same checks and ``AccountNotFound``)."""
    values: dict[str, Any] = {}
    if rate_limit_per_minute is not UNSET:
        values["rate_limit_per_minute"] = rate_limit_per_minute
    if html_policy is not UNSET:
        if html_policy not in (None, "off", "sanitize"):
            raise ValueError(f"unknown HTML policy {html_policy!r}")
        values["html_policy"] = html_policy
    if preview:
        return {**health(address), **values}
    with db_errors(), get_engine().begin() as conn:
        done = conn.execute(update(accounts).where(accounts.c.address == address.lower())
                            .values(updated_at=utcnow(), **values)).rowcount
    if not done:
        raise AccountNotFound(f"no account {address}")
    return health(address)
