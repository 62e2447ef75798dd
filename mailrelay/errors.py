"""Every error mailrelay reports, each with a stable code and a retry decision.

Codes are a contract: producers, dashboards and runbooks match on them. Add codes,
never rename one. ``str()`` of an error names the provider and HTTP status where
there is one and a short, redacted detail; never a token, an address or a body
(addresses are scrubbed from every detail, ``scrub_addresses``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorCode:
    code: str
    retryable: bool
    summary: str


def _codes(*entries: ErrorCode) -> dict[str, ErrorCode]:
    return {entry.code: entry for entry in entries}


CODES: dict[str, ErrorCode] = _codes(
    # Refused at intake: the request itself is wrong, so it is stored as `rejected`.
    ErrorCode("invalid_message", False, "the request is not a valid message object"),
    ErrorCode("invalid_address", False, "an address is not a valid RFC 5322 mailbox"),
    ErrorCode("missing_recipient", False, "no recipient in to, cc or bcc"),
    ErrorCode("too_many_recipients", False, "more recipients than the provider allows"),
    ErrorCode("missing_body", False, "neither text nor html was given"),
    ErrorCode("invalid_header", False, "a header name or value is not allowed"),
    ErrorCode("invalid_attachment", False, "an attachment or inline part is malformed"),
    ErrorCode("attachment_blocked", False, "an attachment's extension or type is blocked by policy"),
    ErrorCode("message_too_large", False, "the message is larger than the provider allows"),
    ErrorCode("html_too_complex", False,
              "the HTML nests too deeply to be sanitized in bounded time"),
    ErrorCode("intake_timeout", False,
              "intake could not finish with the request in MAILRELAY_INTAKE_TIME_LIMIT"),
    ErrorCode("unknown_account", False, "the from address is not a registered account"),
    ErrorCode("account_disabled", False, "the sending account is disabled"),
    ErrorCode("unknown_provider", False, "no provider adapter has that name"),
    ErrorCode("idempotency_conflict", False, "the idempotency key was used for other content"),
    ErrorCode("rollout_gated", False,
              "the provider's rollout does not admit this sender yet and has no fallback"),
    # Returned by a provider and final.
    ErrorCode("invalid_recipient", False, "the provider refused a recipient"),
    ErrorCode("auth_revoked", False, "the account's grant is revoked; reconnect it"),
    ErrorCode("invalid_credentials", False,
              "the account's credentials or server settings are wrong (OAuth client, SMTP login)"),
    ErrorCode("permission_denied", False, "the account may not send this message"),
    ErrorCode("provider_rejected", False, "the provider refused the message"),
    # Worth another try later.
    ErrorCode("rate_limited", True, "the provider or mailrelay's own limit says wait"),
    ErrorCode("provider_unavailable", True, "the provider answered with a server error"),
    ErrorCode("provider_timeout", True, "no answer in time; the message may have been sent"),
    ErrorCode("network_error", True, "the connection to the provider failed"),
    ErrorCode("auth_expired", True, "the provider refused a freshly refreshed access token"),
    ErrorCode("database_unavailable", True, "the outbox database could not be reached"),
    ErrorCode("redis_unavailable", True, "mailrelay's Redis could not be reached"),
    ErrorCode("internal_error", True, "mailrelay failed unexpectedly; the outcome is checked first"),
    # Not raised by an adapter: the deliver path gives up on a message whose workers keep
    # dying (a poison message). Listed so that on-call can filter and replay by it.
    ErrorCode("worker_lost", False,
              "workers died or hung mid-send too often (a poison message); a replay checks first"),
)


def lookup(code: str) -> ErrorCode:
    try:
        return CODES[code]
    except KeyError:
        raise ValueError(f"unknown error code {code!r}") from None


class MailrelayError(Exception):
    """Root of every error that carries a stable code.

    ``retryable`` comes from the code table unless a subclass knows better (a provider
    error that is known to have left no trace, for example).
    """

    def __init__(self, code: str, detail: str = "", *, provider: str | None = None,
                 status: int | None = None, retry_after: float | None = None) -> None:
        self.code = code
        # Every detail passes here, whoever built it: a provider's text naming a
        # recipient (Graph's ErrorInvalidRecipients, an SMTP reply) loses the address
        # before it can reach error_detail, an attempt, the account's health or a log.
        self.detail = _truncate(scrub_addresses(detail))
        self.provider = provider
        self.status = status
        self.retry_after = retry_after
        super().__init__(str(self))

    @property
    def retryable(self) -> bool:
        return lookup(self.code).retryable

    def __str__(self) -> str:
        where = []
        if self.provider:
            where.append(self.provider)
        if self.status is not None:
            where.append(f"HTTP {self.status}")
        prefix = f"[{' '.join(where)}] " if where else ""
        detail = self.detail or lookup(self.code).summary
        return f"{prefix}{self.code}: {detail}"


class ValidationError(MailrelayError):
    """The request cannot become a message; it is stored as `rejected` and never retried."""

    def __init__(self, code: str, detail: str, *, field: str | None = None) -> None:
        if lookup(code).retryable:
            raise ValueError(f"{code} is retryable; a validation error must be permanent")
        self.field = field
        super().__init__(code, f"{field}: {detail}" if field else detail)


class ProviderError(MailrelayError):
    """A provider call failed. ``sent_unknown`` means the request may have reached it."""

    def __init__(self, code: str, detail: str = "", *, provider: str | None = None,
                 status: int | None = None, retry_after: float | None = None,
                 sent_unknown: bool = False, reason: str | None = None) -> None:
        self.sent_unknown = sent_unknown
        # The provider's own name for the error (Graph's error.code, Google's reason,
        # an AADSTS number): what `accounts check` explains in plain words.
        self.reason = reason
        super().__init__(code, detail, provider=provider, status=status, retry_after=retry_after)


class TransientInfraError(MailrelayError):
    """A dependency of mailrelay itself (database, broker) failed; the task is retried as is."""


class ConfigError(Exception):
    """A setting is missing or wrong. Outside MailrelayError on purpose: nothing retries it."""


class IllegalTransition(Exception):
    """A state change that the state machine does not allow; always a bug in the caller."""


DETAIL_LIMIT = 300
# Anything with an @ between characters that cannot delimit an address in a server's
# or an API's text: quotes, brackets, commas and colons end it, so "'ada@x.org'" and
# "<ada@x.org>:" lose only the address.
_ADDRESS_LIKE = re.compile(r"[^\s<>()\[\]\"',;:]*@[^\s<>()\[\]\"',;:]+")
ADDRESS_MASK = "…"


def scrub_addresses(text: str) -> str:
    """``text`` with every address-like word replaced by ``…``."""
    return _ADDRESS_LIKE.sub(ADDRESS_MASK, text) if "@" in text else text


def _truncate(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= DETAIL_LIMIT else text[: DETAIL_LIMIT - 1] + "…"
