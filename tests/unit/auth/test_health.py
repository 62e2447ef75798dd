from __future__ import annotations

import pytest

from mailrelay.auth.health import WORDS, _last_failure, kind_of


@pytest.mark.parametrize(("code", "reason", "detail", "kind"), [
    ("auth_revoked", "invalid_grant", None, "revoked"),
    ("auth_revoked", "AADSTS65001", None, "missing_scope"),
    ("invalid_credentials", "AADSTS90002", None, "wrong_tenant"),
    ("invalid_credentials", "unknown_tenant", None, "wrong_tenant"),
    ("invalid_credentials", "AADSTS700016", None, "wrong_tenant"),
    ("invalid_credentials", "invalid_client", None, "invalid_client"),
    ("permission_denied", "insufficientPermissions", None, "missing_scope"),
    ("permission_denied", "ErrorAccessDenied", None, "missing_scope"),
    ("permission_denied", "MailboxNotEnabledForRESTAPI", None, "mailbox_not_enabled"),
    ("permission_denied", None, "[microsoft HTTP 403] ErrorSendAsDenied: no", "send_as_denied"),
    ("network_error", None, None, "unreachable"),
    ("provider_timeout", None, None, "unreachable"),
    ("provider_unavailable", None, None, "provider_unavailable"),
    ("rate_limited", None, None, "throttled"),
    ("provider_rejected", "SomethingNew", None, "unknown"),
])
def test_kinds(code: str, reason: str | None, detail: str | None, kind: str) -> None:
    assert kind_of(code, reason, detail) == kind
    assert WORDS[kind]


def test_only_a_current_account_level_failure_is_reported() -> None:
    assert _last_failure({"consecutive_failures": 0, "last_error_code": "permission_denied",
                          "last_error_detail": "ErrorSendAsDenied: x"}) is None
    assert _last_failure({"consecutive_failures": 3, "last_error_code": "invalid_recipient",
                          "last_error_detail": "bad address"}) is None
    found = _last_failure({"consecutive_failures": 3, "last_error_code": "permission_denied",
                           "last_error_detail": "ErrorSendAsDenied: x"})
    assert found is not None and found.kind == "send_as_denied" and "last 3 sends" in found.words
