"""Everything the emulator remembers, behind one lock.

Handlers run on many threads at once (concurrency is what some tests measure), so every
read and write of shared data goes through the methods here; nothing hands out a live
reference to a mutable container.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from mailrelay.emulator.faults import FaultTable

DEFAULT_ACCESS_TOKEN_TTL = 3600
DEFAULT_SCOPE = "https://mail.google.com/"


class Refusal(Enum):
    """Why a token exchange failed, in OAuth's words."""

    INVALID_CLIENT = "invalid_client"
    INVALID_GRANT = "invalid_grant"


@dataclass
class Grant:
    client_id: str
    email: str
    scope: str
    revoked: bool = False


@dataclass
class AccessToken:
    email: str
    scope: str
    expires_at: float
    refresh_token: str

    def expires_in(self) -> int:
        return max(0, round(self.expires_at - time.time()))


@dataclass
class StoredMessage:
    id: str
    thread_id: str
    mailbox: str
    folder: str  # "inbox" for a recipient's copy, "sent" for the sender's
    raw: bytes
    message_id: str  # normalized: without angle brackets, lowercased, "" when absent
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    # The parsed summary, made on first use: parsing a large message costs milliseconds.
    summary: dict[str, Any] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Delivery:
    """One accepted message: the sender's copy and every recipient's."""

    sender: str
    raw_sent: bytes
    raw_received: bytes
    recipients: tuple[str, ...]
    message_id: str
    thread_id: str | None = None


def normalize_message_id(value: str) -> str:
    return value.strip().strip("<>").strip().lower()


def new_message_id() -> str:
    # Gmail's ids are 16 hex digits.
    return secrets.token_hex(8)


class State:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.faults = FaultTable()
        self._clients: dict[str, str] = {}
        self._grants: dict[str, Grant] = {}
        self._access: dict[str, AccessToken] = {}
        self._ttl = DEFAULT_ACCESS_TOKEN_TTL
        self._clear_traffic()
        # In flight now: kept across resets, or a request running during a reset
        # would leave its counter below zero when it ends.
        self._active: Counter[str] = Counter()

    def _clear_traffic(self) -> None:
        self._messages: dict[str, StoredMessage] = {}  # id -> message, in arrival order
        self._threads: dict[str, set[str]] = {}  # mailbox -> thread ids
        self._requests: Counter[str] = Counter()
        self._max_active: Counter[str] = Counter()
        self._history_id = 1000

    # --- OAuth ------------------------------------------------------------------------

    def register_client(self, client_id: str, client_secret: str) -> None:
        with self._lock:
            self._clients[client_id] = client_secret

    def grant(self, client_id: str, email: str, scope: str | None = None) -> str:
        """A refresh token for ``email`` through ``client_id``; KeyError if no such client."""
        with self._lock:
            if client_id not in self._clients:
                raise KeyError(client_id)
            token = "1//" + secrets.token_urlsafe(32)
            self._grants[token] = Grant(client_id, email.lower(), scope or DEFAULT_SCOPE)
            return token

    def revoke(self, *, refresh_token: str | None = None, email: str | None = None) -> int:
        """Revoke one grant or every grant of a mailbox, with the access tokens minted
        from them, as Google does; the number of grants revoked."""
        with self._lock:
            hit = [token for token, grant in self._grants.items()
                   if token == refresh_token or (email is not None and grant.email == email.lower())]
            for token in hit:
                self._grants[token].revoked = True
            for access, info in list(self._access.items()):
                if info.refresh_token in hit:
                    del self._access[access]
            return len(hit)

    def expire_tokens(self, email: str | None = None) -> int:
        with self._lock:
            hit = [t for t in self._access.values() if email is None or t.email == email.lower()]
            for token in hit:
                token.expires_at = 0.0
            return len(hit)

    @property
    def access_token_ttl(self) -> int:
        with self._lock:
            return self._ttl

    def set_access_token_ttl(self, seconds: int) -> None:
        with self._lock:
            self._ttl = seconds

    def exchange(
        self, client_id: str, client_secret: str, refresh_token: str
    ) -> tuple[str, AccessToken] | Refusal:
        with self._lock:
            known = self._clients.get(client_id)
            if known is None or not secrets.compare_digest(known, client_secret):
                return Refusal.INVALID_CLIENT
            grant = self._grants.get(refresh_token)
            if grant is None or grant.revoked or grant.client_id != client_id:
                return Refusal.INVALID_GRANT
            token = AccessToken(grant.email, grant.scope, time.time() + self._ttl, refresh_token)
            value = "ya29." + secrets.token_urlsafe(48)
            self._access[value] = token
            return value, token

    def authenticate(self, access_token: str) -> AccessToken | None:
        """The live token's owner, or None for an unknown, revoked or expired token."""
        with self._lock:
            token = self._access.get(access_token)
            if token is None or token.expires_at <= time.time():
                return None
            return token

    def refresh_token_owner(self, refresh_token: str) -> str | None:
        with self._lock:
            grant = self._grants.get(refresh_token)
            return None if grant is None else grant.email

    # --- mail -------------------------------------------------------------------------

    def deliver(self, delivery: Delivery) -> StoredMessage:
        """Store the sender's copy and one per recipient; the sender's copy is returned."""
        with self._lock:
            sender = delivery.sender.lower()
            known = self._threads.setdefault(sender, set())
            sent_id = new_message_id()
            # A thread id the sender never had starts a new thread, as Gmail ignores it.
            thread_id = delivery.thread_id if delivery.thread_id in known else sent_id
            known.add(thread_id)
            sent = StoredMessage(sent_id, thread_id, sender, "sent", delivery.raw_sent,
                                 delivery.message_id)
            self._messages[sent.id] = sent
            for recipient in delivery.recipients:
                copy = StoredMessage(new_message_id(), new_message_id(), recipient.lower(), "inbox",
                                     delivery.raw_received, delivery.message_id)
                self._threads.setdefault(copy.mailbox, set()).add(copy.thread_id)
                self._messages[copy.id] = copy
            self._history_id += 1
            return sent

    def find_sent(self, mailbox: str, message_id: str | None) -> list[StoredMessage]:
        """The mailbox's sent items, newest first, only those with that Message-ID if given."""
        wanted = None if message_id is None else normalize_message_id(message_id)
        with self._lock:
            found = [m for m in self._messages.values()
                     if m.folder == "sent" and m.mailbox == mailbox.lower()
                     and (wanted is None or m.message_id == wanted)]
        return found[::-1]

    def received(self, mailbox: str | None = None) -> list[StoredMessage]:
        """Messages delivered to recipients (one mailbox or all), newest first."""
        with self._lock:
            found = [m for m in self._messages.values()
                     if m.folder == "inbox" and (mailbox is None or m.mailbox == mailbox.lower())]
        return found[::-1]

    def message(self, message_id: str) -> StoredMessage | None:
        with self._lock:
            return self._messages.get(message_id)

    def profile(self, mailbox: str) -> dict[str, Any]:
        with self._lock:
            mine = [m for m in self._messages.values() if m.mailbox == mailbox.lower()]
            return {
                "emailAddress": mailbox,
                "messagesTotal": len(mine),
                "threadsTotal": len({m.thread_id for m in mine}),
                "historyId": str(self._history_id),
            }

    # --- traffic ----------------------------------------------------------------------

    @contextmanager
    def track(self, endpoint: str) -> Iterator[None]:
        """Count one request and keep the highest number in flight at once."""
        with self._lock:
            self._requests[endpoint] += 1
            for key in (endpoint, "*"):
                self._active[key] += 1
                self._max_active[key] = max(self._max_active[key], self._active[key])
        try:
            yield
        finally:
            with self._lock:
                self._active[endpoint] -= 1
                self._active["*"] -= 1

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"requests": dict(self._requests), "max_concurrency": dict(self._max_active)}

    def reset(self, *, everything: bool = False) -> None:
        """Forget faults, counters and messages; with ``everything`` also clients,
        grants, tokens and settings."""
        self.faults.clear()
        with self._lock:
            self._clear_traffic()
            if everything:
                self._clients.clear()
                self._grants.clear()
                self._access.clear()
                self._ttl = DEFAULT_ACCESS_TOKEN_TTL
