"""The provider adapter contract: one fixed sequence, hooks filled in per provider.

``ProviderAdapter.send`` runs prepare → transmit → parse and turns anything a provider
SDK or the network raises into a ``ProviderError`` with a stable code. A provider module
declares its limits as ``Capabilities`` data, which intake validation and the README's
feature table read; nothing outside the provider module and the registry branches on a
provider's name.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from mailrelay.auth.credentials import Credentials
from mailrelay.auth.tokens import TokenGrant
from mailrelay.errors import MailrelayError, ProviderError
from mailrelay.message import Message

if TYPE_CHECKING:
    from mailrelay.auth.consent import ConsentFlow


@dataclass(frozen=True)
class Capabilities:
    max_recipients: int
    max_message_bytes: int
    inline_images: bool
    # How messages above the simple request limit travel, or None if they cannot.
    large_message_path: str | None
    # The provider's documented per-mailbox sending rate, the default of the rate limiter.
    sends_per_minute: int | None
    # Whether the adapter can tell if a Message-ID was already sent (exactly-once recovery).
    can_verify: bool
    # Largest request the simple send path takes; larger messages use large_message_path.
    simple_request_bytes: int | None = None
    # Requests one mailbox may have in flight across every worker (a Redis semaphore).
    max_concurrent_per_mailbox: int | None = None
    # Only producer headers starting with this prefix can be sent (Graph: "X-").
    header_prefix: str | None = None


@dataclass(frozen=True)
class Outbound:
    """One message on its way out, with the identities fixed at intake."""

    message: Message
    message_id: str
    rfc822_message_id: str
    date: dt.datetime
    attempt_number: int
    # The account that sends it when it is not the sender's own (a rollout's fallback,
    # which sends with the From unchanged); None: the sender's account.
    account: str | None = None

    @property
    def account_address(self) -> str:
        """The address of the account whose credentials and mailbox send this message."""
        return self.account or self.message.sender.address


@dataclass(frozen=True)
class SendResult:
    provider_message_id: str | None


class SendGuard(Protocol):
    """What delivery checks before every provider request (see mailrelay.leases): it
    raises, and nothing is sent, when the message's lease is gone."""

    def before_request(self, *, sends: bool) -> None: ...


_guard: ContextVar[SendGuard | None] = ContextVar("mailrelay_send_guard", default=None)


@contextmanager
def guarded(guard: SendGuard) -> Iterator[None]:
    """Every provider request made inside the block asks ``guard`` first."""
    token = _guard.set(guard)
    try:
        yield
    finally:
        _guard.reset(token)


def before_request(*, sends: bool) -> None:
    """Adapters call this right before each request to the provider (``sends``: the
    request may deliver the message); it raises when the send must stop."""
    guard = _guard.get()
    if guard is not None:
        guard.before_request(sends=sends)


class TokenSource(Protocol):
    """Access tokens for the account a send acts for (see mailrelay.auth.tokens)."""

    def get(self) -> str: ...

    def renew(self, rejected: str) -> str: ...


class ProviderAdapter:
    """Base of every provider. Subclasses set ``name`` and ``capabilities`` and fill the hooks."""

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    # OAuth providers get a TokenSource for each send and implement ``refresh``.
    uses_oauth: ClassVar[bool] = False
    # Which secrets `accounts add` asks for: "client_secret", "refresh_token".
    account_secrets: ClassVar[tuple[str, ...]] = ()

    # Whether `mailrelay auth connect` can connect a mailbox of this provider by consent.
    supports_consent: ClassVar[bool] = False
    # The tenant an account gets when none is given (Entra ID: "common").
    default_tenant: ClassVar[str | None] = None

    def check_account(self, *, client_id: str | None, tenant: str | None, app_only: bool) -> None:
        """Refuse account settings this provider cannot use (ValidationError); default: any."""

    def consent_flow(self, *, client_id: str, client_secret: str, tenant: str | None,
                     redirect_uri: str, login_hint: str) -> ConsentFlow:
        """The authorization request of a consent (providers with ``supports_consent``)."""
        raise self._missing("consent_flow")

    def probe(self, account: Credentials, tokens: TokenSource | None) -> str | None:
        """Use, without sending, what sending needs (the mailbox, the lookup scope); the
        signed-in mailbox's address when the provider tells it. Raises ProviderError.
        Default: nothing to probe beyond the token."""
        return None

    def send(self, out: Outbound, tokens: TokenSource | None = None) -> SendResult:
        """Send once. Raises ProviderError only; ``sent_unknown`` says the send may have happened."""
        prepared = self.prepare(out)
        try:
            response = self.transmit(out, prepared, tokens)
        except MailrelayError:
            raise
        except Exception as err:
            raise self.classify(err) from err
        return self.parse(out, response)

    def find_sent(self, out: Outbound, tokens: TokenSource | None = None) -> str | None:
        """The provider's id for an earlier send of ``out.rfc822_message_id``, or None.

        Only called when ``capabilities.can_verify`` is true.
        """
        raise self._missing("find_sent")

    def refresh(self, account: Credentials) -> TokenGrant:
        """Exchange the account's grant for a new access token (OAuth providers).

        Raises ProviderError: ``auth_revoked`` for a revoked grant, ``invalid_credentials``
        for a wrong client, retryable codes for network trouble.
        """
        raise self._missing("refresh")

    # Hooks -----------------------------------------------------------------------------
    def prepare(self, out: Outbound) -> Any:
        """Build the provider request (MIME, JSON...). Pure: no I/O."""
        raise self._missing("prepare")

    def transmit(self, out: Outbound, prepared: Any, tokens: TokenSource | None) -> Any:
        """Do the I/O. May raise anything; ``classify`` maps what is not a ProviderError."""
        raise self._missing("transmit")

    def parse(self, out: Outbound, response: Any) -> SendResult:
        """Read the provider's answer into a SendResult."""
        raise self._missing("parse")

    def classify(self, err: Exception) -> ProviderError:
        """Map an unexpected exception from ``transmit``. The safe default: outcome unknown."""
        return ProviderError("internal_error", type(err).__name__, provider=self.name,
                             sent_unknown=True)

    def _missing(self, hook: str) -> NotImplementedError:
        return NotImplementedError(f"{type(self).__name__}.{hook} is not implemented")
