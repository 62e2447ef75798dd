"""`accounts check`: refresh, probe, and say in plain words what is wrong with an account.

The check refreshes the access token (bypassing the cache), then asks the adapter to use,
without sending, what sending needs (``ProviderAdapter.probe``). A failure that only a
send shows (Graph's ErrorSendAsDenied) is read from the account's last failed attempt.
Each diagnosis has a stable ``kind``, for scripts, and a sentence, for people.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from mailrelay.auth.credentials import Credentials
from mailrelay.auth.tokens import TokenGrant, manager
from mailrelay.errors import MailrelayError

WORDS = {
    "ok": "the account can send: a token was issued and the mailbox answered",
    "disabled": "the account is disabled in mailrelay",
    "revoked": "the grant was revoked or has expired (password change, an admin, the user): "
               "run `mailrelay auth reconnect ADDRESS`",
    "wrong_tenant": "the tenant is wrong: Entra ID does not know it, or the app is not "
                    "registered in it (check --tenant and --client-id)",
    "invalid_client": "the OAuth client id or secret is wrong, or the secret expired "
                      "(or MAILRELAY_SECRET_KEY changed)",
    "missing_scope": "the grant lacks a permission mailrelay needs (send, or read Sent Items "
                     "for the exactly-once lookup): run `mailrelay auth reconnect ADDRESS` and "
                     "approve every permission, or have an administrator grant consent",
    "mailbox_not_enabled": "the mailbox is not enabled for the REST API (no Exchange Online "
                           "licence, an on-premises or inactive mailbox)",
    "send_as_denied": "the app may not send as this mailbox (an application access policy "
                      "or a missing Send As right)",
    "wrong_mailbox": "the grant belongs to another mailbox than this account's address: "
                     "reconnect, signed in as the account's address",
    "unreachable": "the provider could not be reached (network, DNS, TLS, or a timeout)",
    "provider_unavailable": "the provider is failing right now (5xx); try again later",
    "throttled": "the provider is throttling this client or mailbox right now",
    "unknown": "the provider refused in a way mailrelay does not recognise",
}

# `ok` for a provider with no token and no mailbox to ask (SMTP, the sink): nothing was
# tested, and saying a token was issued would be untrue.
OK_UNTESTED = ("nothing to test without sending: this provider issues no token and has no "
               "mailbox to probe (the first send tests the account)")

_BY_REASON = {
    "AADSTS90002": "wrong_tenant", "AADSTS900023": "wrong_tenant", "unknown_tenant": "wrong_tenant",
    "AADSTS700016": "wrong_tenant",
    "AADSTS65001": "missing_scope",  # no consent to (one of) the scopes asked for
    "MailboxNotEnabledForRESTAPI": "mailbox_not_enabled",
    "ErrorSendAsDenied": "send_as_denied",
    "insufficientPermissions": "missing_scope", "ErrorAccessDenied": "missing_scope",
}
_BY_CODE = {
    "auth_revoked": "revoked", "invalid_credentials": "invalid_client",
    "permission_denied": "missing_scope", "account_disabled": "disabled",
    "network_error": "unreachable", "provider_timeout": "unreachable",
    "provider_unavailable": "provider_unavailable", "rate_limited": "throttled",
}
# Failures of the account rather than of one message: a last failed send of these kinds
# is reported even when the probe passes.
_ACCOUNT_KINDS = frozenset({"send_as_denied", "mailbox_not_enabled", "missing_scope",
                            "revoked", "invalid_client", "wrong_tenant"})


@dataclass(frozen=True)
class Diagnosis:
    ok: bool
    kind: str
    words: str
    code: str | None = None
    detail: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "kind": self.kind, "diagnosis": self.words, "code": self.code,
                "detail": self.detail}


def kind_of(code: str | None, reason: str | None = None, detail: str | None = None) -> str:
    """The diagnosis kind for an error code and the provider's reason (or, for a stored
    failure that kept only its detail, a reason named in the detail)."""
    if reason in _BY_REASON:
        return _BY_REASON[reason]
    for known, kind in _BY_REASON.items():
        if detail and known in detail:
            return kind
    return _BY_CODE.get(code or "", "unknown")


def _failed(err: MailrelayError) -> Diagnosis:
    kind = kind_of(err.code, getattr(err, "reason", None), err.detail)
    return Diagnosis(False, kind, WORDS[kind], err.code, str(err))


class Probe(Protocol):
    """What a check needs of the account's provider adapter (``mailrelay.providers``),
    which the caller passes in: auth sits below the providers and does not import them."""

    @property
    def uses_oauth(self) -> bool:
        ...

    def refresh(self, account: Credentials) -> TokenGrant:
        ...

    def probe(self, account: Credentials, tokens: Any) -> str | None:
        ...


def diagnose(creds: Credentials, health: dict[str, Any], adapter: Probe) -> Diagnosis:
    """``health`` is the account's public row (its last failure); ``adapter`` the
    provider adapter of ``creds.provider``."""
    if creds.state == "disabled":
        return Diagnosis(False, "disabled", WORDS["disabled"], "account_disabled")
    signed_in = None
    words = WORDS["ok"] if adapter.uses_oauth else OK_UNTESTED
    try:
        if adapter.uses_oauth:
            tokens = manager()
            tokens.forget(creds.id)  # a real refresh, not the cached token
            tokens.get(creds, adapter.refresh)
            signed_in = adapter.probe(creds, tokens.source(creds, adapter.refresh))
        else:
            signed_in = adapter.probe(creds, None)
    except MailrelayError as err:
        return _failed(err)
    if signed_in and signed_in.lower() != creds.address:
        return Diagnosis(False, "wrong_mailbox", WORDS["wrong_mailbox"], "permission_denied",
                         f"the grant is {signed_in}'s")
    return _last_failure(health) or Diagnosis(True, "ok", words)


def _last_failure(health: dict[str, Any]) -> Diagnosis | None:
    """The last failed send, if it is the account's fault and nothing sent since."""
    if not health.get("consecutive_failures"):
        return None
    code, detail = health.get("last_error_code"), health.get("last_error_detail")
    kind = kind_of(code, None, detail)
    if kind not in _ACCOUNT_KINDS:
        return None
    return Diagnosis(False, kind, f"the token and mailbox answer, but the last "
                     f"{health['consecutive_failures']} sends failed: {WORDS[kind]}", code, detail)
