"""Registered sending accounts. Secrets are handled by mailrelay.auth, never here in clear."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from mailrelay import providers
from mailrelay.addressing import parse_mailbox
from mailrelay.errors import ValidationError
from mailrelay.store.db import db_errors, get_engine
from mailrelay.store.models import ACCOUNTS
from mailrelay.store.outbox import utcnow

accounts = ACCOUNTS

STATES = ("active", "reauth_required", "disabled")


class AccountExists(Exception):
    pass


def add(provider: str, address: str, *, client_id: str | None = None, tenant: str | None = None,
        app_only: bool = False, rate_limit_per_minute: int | None = None) -> dict[str, Any]:
    providers.queue_for(provider)  # unknown provider: ValidationError with a hint
    mailbox = parse_mailbox(address, field="address")
    if mailbox.name:
        raise ValidationError("invalid_address", "give the bare address, without a display name",
                              field="address")
    now = utcnow()
    row = {"address": mailbox.address.lower(), "provider": provider, "state": "active",
           "client_id": client_id, "tenant": tenant, "app_only": app_only,
           "rate_limit_per_minute": rate_limit_per_minute, "created_at": now, "updated_at": now,
           "consecutive_failures": 0}
    try:
        with db_errors(), get_engine().begin() as conn:
            conn.execute(insert(accounts).values(row))
    except IntegrityError:
        raise AccountExists(f"an account for {row['address']} exists already") from None
    return public(row)


def list_all() -> list[dict[str, Any]]:
    with db_errors(), get_engine().connect() as conn:
        rows = conn.execute(select(accounts).order_by(accounts.c.address)).mappings().all()
    return [public(dict(row)) for row in rows]


def public(row: dict[str, Any]) -> dict[str, Any]:
    """What may be shown of an account: no secret, not even whether one is set."""
    def iso(value: Any) -> str | None:
        return value.isoformat() if value else None

    return {"address": row["address"], "provider": row["provider"], "state": row["state"],
            "client_id": row.get("client_id"), "tenant": row.get("tenant"),
            "app_only": bool(row.get("app_only")),
            "rate_limit_per_minute": row.get("rate_limit_per_minute"),
            "created_at": iso(row.get("created_at")), "last_success_at": iso(row.get("last_success_at")),
            "consecutive_failures": row.get("consecutive_failures", 0)}
