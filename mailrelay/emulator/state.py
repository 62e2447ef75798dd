"""Everything the emulator remembers, behind one lock.

Handlers run on many threads at once (concurrency is what some tests measure), so every
read and write of shared data goes through the methods here; nothing hands out a live
reference to a mutable container.
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any

from mailrelay.emulator.faults import FaultTable
from mailrelay.emulator.graph_mail import Attachment, GraphMessage, new_attachment_id, new_id

DEFAULT_ACCESS_TOKEN_TTL = 3600
DEFAULT_SCOPE = "https://mail.google.com/"
# Microsoft: requests one mailbox may have in flight at Graph, and how long an
# attachment upload session lives.
GRAPH_CONCURRENCY_LIMIT = 4
UPLOAD_SESSION_TTL = 24 * 3600
# Consent: how long a sign-in page waits for its answer, and an authorization code for
# its redemption (Google and Entra both give a code ten minutes).
AUTHORIZATION_TTL = 600
CODE_TTL = 600
# What each provider's authorization codes look like, so that a log or a test shows at
# a glance whose code it holds.
_CODE_PREFIXES = {"google": "4/0A", "microsoft": "1.AXoA"}
# Namespace for the stable object ids the emulator gives Entra users and tenants.
_MS_IDS = uuid.UUID("6f1e3a52-4d0b-4c1e-9a57-6d1d3c0e9b11")
_MS_PSEUDO_TENANTS = frozenset({"common", "organizations"})


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
    provider: str = "gmail"  # or "graph"
    # Graph's JSON view of this copy (ids, internetMessageId, extended properties,
    # attachment flags); None for Gmail.
    graph: dict[str, Any] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Delivery:
    """One accepted message: the sender's copy and every recipient's."""

    sender: str
    raw_sent: bytes
    raw_received: bytes
    recipients: tuple[str, ...]
    message_id: str
    thread_id: str | None = None
    provider: str = "gmail"
    keep_sent: bool = True  # Graph's saveToSentItems
    sent_graph: dict[str, Any] | None = None  # the sender's copy as Graph shows it
    received_graph: dict[str, Any] | None = None  # and the recipients'


# --- consent (authorization code with PKCE) --------------------------------------------


@dataclass(frozen=True)
class Authorization:
    """An authorization request as the provider checked it: what the sign-in page shows,
    and what the code issued for it is bound to. Kept server-side, so nothing the
    browser posts back can change the redirect or the challenge."""

    provider: str  # "google" or "microsoft"
    client_id: str
    redirect_uri: str
    scopes: tuple[str, ...]
    state: str | None
    code_challenge: str
    login_hint: str | None = None
    nonce: str | None = None  # OpenID Connect: comes back in the id token
    offline: bool = False  # Google: access_type=offline, the only way to a refresh token
    client_info: bool = False  # Entra: client_info=1, answered with the user's ids


@dataclass(frozen=True)
class IssuedCode:
    authorization: Authorization
    email: str  # who signed in and consented


class CodeRefusal(Enum):
    """Why an authorization code was not redeemed."""

    UNKNOWN = "unknown"  # never issued (or long forgotten), or another provider's
    REDEEMED = "redeemed"  # a code works once
    EXPIRED = "expired"


@dataclass
class _PendingAuthorization:
    authorization: Authorization
    expires_at: float


@dataclass
class _HeldCode:
    issued: IssuedCode
    expires_at: float
    redeemed: bool = False


# --- Microsoft ----------------------------------------------------------------------


class MsRefusal(Enum):
    """Why Entra refused a refresh token."""

    UNKNOWN_TOKEN = "unknown_token"  # noqa: S105 (never issued, or garbled)
    REVOKED = "revoked"
    REDEEMED = "redeemed"  # strict rotation: used once already
    OTHER_CLIENT = "other_client"  # issued to another app
    NOT_CONSENTED = "not_consented"  # a scope the user never consented to


@dataclass(frozen=True)
class MsApp:
    client_id: str
    secret: str
    tenant: str
    roles: tuple[str, ...]  # application permissions, for client-credentials tokens
    domains: tuple[str, ...]  # the tenant's mail domains; empty: any mailbox is the tenant's


@dataclass
class MsGrant:
    client_id: str
    email: str
    scopes: tuple[str, ...] | None  # consented (any case); None: whatever is asked
    revoked: bool = False


@dataclass
class MsRefreshToken:
    grant: MsGrant  # every token rotated from one grant shares it
    used: bool = False


@dataclass
class MsAccessToken:
    client_id: str
    tenant: str
    email: str | None  # None for an app-only (client credentials) token
    audience: str  # the resource, e.g. https://graph.microsoft.com
    scopes: tuple[str, ...]  # delegated scopes, or the app's roles
    expires_at: float

    @property
    def app_only(self) -> bool:
        return self.email is None

    def expires_in(self) -> int:
        return max(0, round(self.expires_at - time.time()))

    def expired(self) -> bool:
        return self.expires_at <= time.time()


@dataclass
class Draft:
    id: str
    mailbox: str
    message: GraphMessage
    internet_message_id: str
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def snapshot(self) -> Draft:
        return replace(self, message=replace(self.message, attachments=list(self.message.attachments)))


@dataclass
class UploadSession:
    id: str
    authtoken: str
    mailbox: str
    draft_id: str
    name: str
    content_type: str
    size: int
    is_inline: bool
    content_id: str | None
    expires_at: float
    received: bytearray = field(default_factory=bytearray, repr=False)
    attachment_id: str | None = None  # set once the last byte is in


@dataclass(frozen=True)
class UploadStatus:
    next_offset: int
    size: int
    expires_at: float
    attachment_id: str | None

    @property
    def done(self) -> bool:
        return self.attachment_id is not None


class Chunk(Enum):
    """What became of one PUT to an upload URL."""

    ACCEPTED = "accepted"
    COMPLETED = "completed"
    NO_SESSION = "no_session"  # unknown, expired, cancelled, or a wrong authtoken
    TOO_LARGE = "too_large"
    BAD_RANGE = "bad_range"  # Content-Range disagrees with the body or the session
    OUT_OF_ORDER = "out_of_order"  # a gap or an overlap
    DRAFT_GONE = "draft_gone"


def ms_object_id(name: str) -> str:
    """A stable GUID for a user or tenant; a GUID given as a tenant stays itself."""
    try:
        return str(uuid.UUID(name))
    except ValueError:
        return str(uuid.uuid5(_MS_IDS, name.lower()))


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
        self._pending: dict[str, _PendingAuthorization] = {}  # request id -> authorize request
        self._codes: dict[str, _HeldCode] = {}
        self._consent_email: str | None = None
        # In flight now: kept across resets, or a request running during a reset
        # would leave its counter below zero when it ends.
        self._active: Counter[str] = Counter()

        self._ms_apps: dict[str, MsApp] = {}
        self._ms_refresh: dict[str, MsRefreshToken] = {}
        self._ms_access: dict[str, MsAccessToken] = {}
        self._ms_users: dict[str, str] = {}  # object id -> email
        self._ms_strict_rotation = False
        self._graph_active: Counter[str] = Counter()  # per mailbox; kept across resets too
        # Seconds before a sent message shows in lookups: Gmail answers `rfc822msgid:`
        # from a search index and Graph copies to Sent Items asynchronously, so neither
        # finds a message the instant it was sent. 0 is the kind, instant emulator.
        self._index_lag = 0.0

    def _clear_traffic(self) -> None:
        self._messages: dict[str, StoredMessage] = {}  # id -> message, in arrival order
        self._threads: dict[str, set[str]] = {}  # mailbox -> thread ids
        self._requests: Counter[str] = Counter()
        self._max_active: Counter[str] = Counter()
        self._history_id = 1000
        self._drafts: dict[str, Draft] = {}
        self._uploads: dict[str, UploadSession] = {}
        self._max_chunk = 0
        self._max_chunk_by_session: dict[str, int] = {}
        self._graph_max_active: Counter[str] = Counter()
        self._graph_throttled: Counter[str] = Counter()

    # --- OAuth ------------------------------------------------------------------------

    def register_client(self, client_id: str, client_secret: str) -> None:
        with self._lock:
            self._clients[client_id] = client_secret

    def client_registered(self, client_id: str) -> bool:
        with self._lock:
            return client_id in self._clients

    def client_authentic(self, client_id: str, client_secret: str) -> bool:
        with self._lock:
            known = self._clients.get(client_id)
            return known is not None and secrets.compare_digest(known, client_secret)

    def grant(self, client_id: str, email: str, scope: str | None = None) -> str:
        """A refresh token for ``email`` through ``client_id``; KeyError if no such client."""
        with self._lock:
            if client_id not in self._clients:
                raise KeyError(client_id)
            token = "1//" + secrets.token_urlsafe(32)
            self._grants[token] = Grant(client_id, email.lower(), scope or DEFAULT_SCOPE)
            return token

    def revoke(self, *, refresh_token: str | None = None, email: str | None = None) -> int:
        """Revoke one grant or every grant of a mailbox; the number of grants revoked.
        At Google the access tokens minted from them die too. Microsoft grants (one
        refresh token names its grant, with every token rotated from it) lose their
        refresh tokens only: Entra's access tokens live until they expire."""
        with self._lock:
            hit = [token for token, grant in self._grants.items()
                   if token == refresh_token or (email is not None and grant.email == email.lower())]
            for token in hit:
                self._grants[token].revoked = True
            for access, info in list(self._access.items()):
                if info.refresh_token in hit:
                    del self._access[access]
            ms_hit = {id(rt.grant): rt.grant for token, rt in self._ms_refresh.items()
                      if not rt.grant.revoked and (
                          token == refresh_token or (email is not None and rt.grant.email == email.lower()))}
            for grant in ms_hit.values():
                grant.revoked = True
            return len(hit) + len(ms_hit)

    def expire_tokens(self, email: str | None = None) -> int:
        """Expire the access tokens of a mailbox, or all (Microsoft's app-only ones too)."""
        with self._lock:
            hit: list[AccessToken | MsAccessToken] = [
                t for t in self._access.values() if email is None or t.email == email.lower()]
            hit += [t for t in self._ms_access.values() if email is None or t.email == email.lower()]
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

    # --- consent ----------------------------------------------------------------------

    @property
    def consent_email(self) -> str | None:
        with self._lock:
            return self._consent_email

    def set_consent_email(self, email: str | None) -> None:
        """Who signs in on a sign-in page without a login_hint (auto=1 included)."""
        with self._lock:
            self._consent_email = None if email is None else email.lower()

    def open_authorization(self, authorization: Authorization) -> str:
        """Keep an authorization request until the person answers; its random id."""
        request_id = secrets.token_urlsafe(24)
        now = time.time()
        with self._lock:
            # Abandoned pages would pile up otherwise: drop the expired ones now.
            for old in [k for k, v in self._pending.items() if v.expires_at <= now]:
                del self._pending[old]
            self._pending[request_id] = _PendingAuthorization(authorization, now + AUTHORIZATION_TTL)
        return request_id

    def _live_authorization(self, request_id: str, provider: str) -> Authorization | None:
        held = self._pending.get(request_id)
        if held is None or held.expires_at <= time.time() or held.authorization.provider != provider:
            return None
        return held.authorization

    def pending_authorization(self, request_id: str, provider: str) -> Authorization | None:
        """The live authorization request with this id, left in place."""
        with self._lock:
            return self._live_authorization(request_id, provider)

    def take_authorization(self, request_id: str, provider: str) -> Authorization | None:
        """The live authorization request with this id, removed: a page is answered once."""
        with self._lock:
            found = self._live_authorization(request_id, provider)
            if found is not None:
                del self._pending[request_id]
            return found

    def issue_code(self, authorization: Authorization, email: str) -> str:
        """A new authorization code for ``email``'s consent to the request."""
        now = time.time()
        code = _CODE_PREFIXES[authorization.provider] + secrets.token_urlsafe(48)
        with self._lock:
            # Redeemed and expired codes are kept a while to be named as such, then dropped.
            for old in [k for k, v in self._codes.items() if v.expires_at + CODE_TTL <= now]:
                del self._codes[old]
            self._codes[code] = _HeldCode(IssuedCode(authorization, email.lower()), now + CODE_TTL)
        return code

    def redeem_code(self, code: str, provider: str) -> IssuedCode | CodeRefusal:
        """What the code was issued for; the first attempt uses it up, passed or failed,
        so that a stolen code cannot be tried again and again."""
        with self._lock:
            held = self._codes.get(code)
            if held is None or held.issued.authorization.provider != provider:
                return CodeRefusal.UNKNOWN
            if held.redeemed:
                return CodeRefusal.REDEEMED
            held.redeemed = True
            if held.expires_at <= time.time():
                return CodeRefusal.EXPIRED
            return held.issued

    def code_owner(self, code: str) -> str | None:
        with self._lock:
            held = self._codes.get(code)
            return None if held is None else held.issued.email

    # --- mail -------------------------------------------------------------------------

    def deliver(self, delivery: Delivery) -> StoredMessage:
        """Store the sender's copy and one per recipient; the sender's copy is returned
        (and not kept when ``keep_sent`` is off)."""
        with self._lock:
            sender = delivery.sender.lower()
            known = self._threads.setdefault(sender, set())
            sent_id = new_message_id()
            # A thread id the sender never had starts a new thread, as Gmail ignores it.
            thread_id = delivery.thread_id if delivery.thread_id in known else sent_id
            known.add(thread_id)
            sent = StoredMessage(sent_id, thread_id, sender, "sent", delivery.raw_sent,
                                 delivery.message_id, provider=delivery.provider,
                                 graph=delivery.sent_graph)
            if delivery.keep_sent:
                self._messages[sent.id] = sent
            for recipient in delivery.recipients:
                received_graph = None if delivery.received_graph is None else {
                    **delivery.received_graph, "id": new_id()}
                copy = StoredMessage(new_message_id(), new_message_id(), recipient.lower(), "inbox",
                                     delivery.raw_received, delivery.message_id,
                                     provider=delivery.provider, graph=received_graph)
                self._threads.setdefault(copy.mailbox, set()).add(copy.thread_id)
                self._messages[copy.id] = copy
            self._history_id += 1
            return sent

    @property
    def index_lag(self) -> float:
        with self._lock:
            return self._index_lag

    def set_index_lag(self, seconds: float) -> None:
        with self._lock:
            self._index_lag = seconds

    def _indexed(self, message: StoredMessage) -> bool:
        """Visible to lookups yet (see ``_index_lag``)? Called with the lock held."""
        return (not self._index_lag
                or message.received_at <= datetime.now(UTC) - timedelta(seconds=self._index_lag))

    def find_sent(self, mailbox: str, message_id: str | None) -> list[StoredMessage]:
        """The mailbox's sent items that lookups see, newest first, only those with that
        Message-ID if given."""
        wanted = None if message_id is None else normalize_message_id(message_id)
        with self._lock:
            found = [m for m in self._messages.values()
                     if m.folder == "sent" and m.mailbox == mailbox.lower()
                     and (wanted is None or m.message_id == wanted) and self._indexed(m)]
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

    # --- Microsoft: Entra ID -------------------------------------------------------------

    def ms_register_app(self, app: MsApp) -> None:
        with self._lock:
            self._ms_apps[app.client_id] = app

    def ms_app(self, client_id: str) -> MsApp | None:
        with self._lock:
            return self._ms_apps.get(client_id)

    def ms_tenant_known(self, tenant: str) -> bool:
        """A tenant some registered app lives in (by name or GUID), or common/organizations."""
        wanted = tenant.lower()
        with self._lock:
            return wanted in _MS_PSEUDO_TENANTS or any(
                wanted in (app.tenant.lower(), ms_object_id(app.tenant)) for app in self._ms_apps.values())

    @property
    def ms_strict_rotation(self) -> bool:
        with self._lock:
            return self._ms_strict_rotation

    def set_ms_strict_rotation(self, on: bool) -> None:
        with self._lock:
            self._ms_strict_rotation = on

    def ms_grant(self, client_id: str, email: str, scopes: tuple[str, ...] | None = None) -> str:
        """A refresh token for ``email`` through the app; KeyError if no such app."""
        with self._lock:
            if client_id not in self._ms_apps:
                raise KeyError(client_id)
            email = email.lower()
            self._ms_users[ms_object_id(email)] = email
            grant = MsGrant(client_id, email, None if scopes is None else tuple(scopes))
            return self._new_ms_refresh(grant)

    def _new_ms_refresh(self, grant: MsGrant) -> str:
        token = "0.AXoA" + secrets.token_urlsafe(64)
        self._ms_refresh[token] = MsRefreshToken(grant)
        return token

    def ms_redeem(
        self, client_id: str, refresh_token: str, audience: str, scopes: tuple[str, ...] | None,
        default_scopes: tuple[str, ...],
    ) -> tuple[str, str, MsAccessToken] | MsRefusal:
        """A new access token and a new refresh token for a refresh token; ``scopes``
        None stands for ".default": everything consented (``default_scopes`` when the
        grant was made without a list)."""
        with self._lock:
            held = self._ms_refresh.get(refresh_token)
            if held is None:
                return MsRefusal.UNKNOWN_TOKEN
            grant = held.grant
            if grant.revoked:
                return MsRefusal.REVOKED
            if grant.client_id != client_id:
                return MsRefusal.OTHER_CLIENT
            if held.used and self._ms_strict_rotation:
                return MsRefusal.REDEEMED
            if scopes is None:
                granted = grant.scopes if grant.scopes is not None else default_scopes
            elif grant.scopes is not None and not (
                    {s.lower() for s in scopes} <= {s.lower() for s in grant.scopes}):
                return MsRefusal.NOT_CONSENTED
            else:
                granted = scopes
            held.used = True
            app = self._ms_apps[client_id]
            token = MsAccessToken(client_id, app.tenant, grant.email, audience, tuple(granted),
                                  time.time() + self._ttl)
            value = "EwBwA8l6" + secrets.token_urlsafe(96)
            self._ms_access[value] = token
            return value, self._new_ms_refresh(grant), token

    def ms_app_token(self, client_id: str, audience: str) -> tuple[str, MsAccessToken]:
        """A client-credentials token: the app itself, with its roles."""
        with self._lock:
            app = self._ms_apps[client_id]
            token = MsAccessToken(client_id, app.tenant, None, audience, app.roles,
                                  time.time() + self._ttl)
            value = "EwBwA8l6" + secrets.token_urlsafe(96)
            self._ms_access[value] = token
            return value, token

    def ms_authenticate(self, access_token: str) -> MsAccessToken | None:
        """The token's record, expired or not (Graph says which); None when unknown."""
        with self._lock:
            token = self._ms_access.get(access_token)
            return None if token is None else replace(token)

    def ms_refresh_owner(self, refresh_token: str) -> str | None:
        with self._lock:
            held = self._ms_refresh.get(refresh_token)
            return None if held is None else held.grant.email

    def ms_user_id(self, email: str) -> str:
        """The user's object id, remembered so /users/{id} finds the mailbox again."""
        email = email.lower()
        object_id = ms_object_id(email)
        with self._lock:
            self._ms_users[object_id] = email
        return object_id

    def ms_user(self, id_or_upn: str) -> str | None:
        """The mailbox a /users/{id} segment names: a user principal name is itself, an
        object id the user it was given to; None for an unknown id."""
        if "@" in id_or_upn:
            return id_or_upn.lower()
        with self._lock:
            return self._ms_users.get(id_or_upn.lower())

    # --- Microsoft: Graph mail -------------------------------------------------------------

    def graph_enter(self, mailbox: str, limit: int = GRAPH_CONCURRENCY_LIMIT) -> bool:
        """Admit one more request for the mailbox, or count it throttled (False)."""
        mailbox = mailbox.lower()
        with self._lock:
            if self._graph_active[mailbox] >= limit:
                self._graph_throttled[mailbox] += 1
                return False
            self._graph_active[mailbox] += 1
            self._graph_max_active[mailbox] = max(self._graph_max_active[mailbox],
                                                  self._graph_active[mailbox])
            return True

    def graph_leave(self, mailbox: str) -> None:
        with self._lock:
            self._graph_active[mailbox.lower()] -= 1

    def graph_sent_items(self, mailbox: str) -> list[dict[str, Any]]:
        """Graph's view of the mailbox's Sent Items, newest first (what lookups see)."""
        with self._lock:
            return [dict(m.graph) for m in reversed(self._messages.values())
                    if m.folder == "sent" and m.mailbox == mailbox.lower() and m.graph is not None
                    and self._indexed(m)]

    def save_draft(self, draft: Draft) -> None:
        with self._lock:
            self._drafts[draft.id] = draft.snapshot()

    def draft(self, mailbox: str, draft_id: str) -> Draft | None:
        with self._lock:
            found = self._drafts.get(draft_id)
            return None if found is None or found.mailbox != mailbox.lower() else found.snapshot()

    def drafts(self, mailbox: str) -> list[Draft]:
        with self._lock:
            return [d.snapshot() for d in reversed(self._drafts.values()) if d.mailbox == mailbox.lower()]

    def take_draft(self, mailbox: str, draft_id: str) -> Draft | None:
        """Remove and return a draft (sending it); None if it is not there (any more)."""
        with self._lock:
            found = self._drafts.get(draft_id)
            if found is None or found.mailbox != mailbox.lower():
                return None
            del self._drafts[draft_id]
            return found

    def add_attachment(self, mailbox: str, draft_id: str, attachment: Attachment) -> bool:
        with self._lock:
            found = self._drafts.get(draft_id)
            if found is None or found.mailbox != mailbox.lower():
                return False
            found.message.attachments.append(attachment)
            return True

    def open_upload(self, mailbox: str, draft_id: str, name: str, content_type: str, size: int,
                    is_inline: bool, content_id: str | None) -> UploadSession | None:
        """A new upload session for an attachment of the draft; None if no such draft."""
        with self._lock:
            found = self._drafts.get(draft_id)
            if found is None or found.mailbox != mailbox.lower():
                return None
            session = UploadSession(
                id=secrets.token_urlsafe(24), authtoken=secrets.token_urlsafe(32),
                mailbox=mailbox.lower(), draft_id=draft_id, name=name, content_type=content_type,
                size=size, is_inline=is_inline, content_id=content_id,
                expires_at=time.time() + UPLOAD_SESSION_TTL)
            self._uploads[session.id] = session
            return replace(session, received=bytearray())

    def upload_owner(self, session_id: str) -> str | None:
        with self._lock:
            session = self._uploads.get(session_id)
            return None if session is None else session.mailbox

    def _live_upload(self, session_id: str, authtoken: str) -> UploadSession | None:
        session = self._uploads.get(session_id)
        if session is None or not secrets.compare_digest(session.authtoken, authtoken):
            return None
        if session.expires_at <= time.time():
            del self._uploads[session_id]
            return None
        return session

    @staticmethod
    def _status(session: UploadSession) -> UploadStatus:
        received = session.size if session.attachment_id is not None else len(session.received)
        return UploadStatus(received, session.size, session.expires_at, session.attachment_id)

    def upload_status(self, session_id: str, authtoken: str) -> UploadStatus | None:
        with self._lock:
            session = self._live_upload(session_id, authtoken)
            return None if session is None else self._status(session)

    def cancel_upload(self, session_id: str, authtoken: str) -> bool:
        with self._lock:
            if self._live_upload(session_id, authtoken) is None:
                return False
            del self._uploads[session_id]
            return True

    def upload_chunk(self, session_id: str, authtoken: str, first: int, last: int, total: int,
                     data: bytes, chunk_limit: int) -> tuple[Chunk, UploadStatus | None]:
        """Take the bytes ``first``..``last`` (inclusive) of the upload. Every chunk that
        reaches a live session counts for the largest-chunk statistics, refused or not."""
        with self._lock:
            session = self._live_upload(session_id, authtoken)
            if session is None:
                return Chunk.NO_SESSION, None
            self._max_chunk = max(self._max_chunk, len(data))
            self._max_chunk_by_session[session_id] = max(
                self._max_chunk_by_session.get(session_id, 0), len(data))
            if len(data) > chunk_limit:
                return Chunk.TOO_LARGE, self._status(session)
            if total != session.size or last - first + 1 != len(data) or not data:
                return Chunk.BAD_RANGE, self._status(session)
            if session.attachment_id is not None or first != len(session.received):
                return Chunk.OUT_OF_ORDER, self._status(session)
            if last >= session.size:
                return Chunk.BAD_RANGE, self._status(session)
            draft = self._drafts.get(session.draft_id)
            if draft is None:
                return Chunk.DRAFT_GONE, self._status(session)
            session.received += data
            if len(session.received) < session.size:
                return Chunk.ACCEPTED, self._status(session)
            attachment = Attachment(
                id=new_attachment_id(), name=session.name,
                content_type=session.content_type, data=bytes(session.received),
                is_inline=session.is_inline, content_id=session.content_id)
            draft.message.attachments.append(attachment)
            session.attachment_id = attachment.id
            session.received = bytearray()  # the bytes live on in the draft
            return Chunk.COMPLETED, self._status(session)

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
            return {
                "requests": dict(self._requests),
                "max_concurrency": dict(self._max_active),
                # Graph: the most requests a mailbox had admitted at once, the ones
                # refused for going over the limit, and the largest upload chunk seen.
                "max_concurrency_by_mailbox": dict(self._graph_max_active),
                "throttled_by_mailbox": dict(self._graph_throttled),
                "max_chunk_bytes": self._max_chunk,
                "max_chunk_bytes_by_session": dict(self._max_chunk_by_session),
            }

    def reset(self, *, everything: bool = False) -> None:
        """Forget faults, counters, messages, drafts and upload sessions; with
        ``everything`` also clients, apps, grants, tokens, settings, consent pages
        waiting for an answer and authorization codes."""
        self.faults.clear()
        with self._lock:
            self._clear_traffic()
            if everything:
                self._clients.clear()
                self._grants.clear()
                self._access.clear()
                self._ttl = DEFAULT_ACCESS_TOKEN_TTL
                self._ms_apps.clear()
                self._ms_refresh.clear()
                self._ms_access.clear()
                self._ms_users.clear()
                self._ms_strict_rotation = False
                self._index_lag = 0.0
                self._pending.clear()
                self._codes.clear()
                self._consent_email = None
