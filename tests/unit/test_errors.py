from __future__ import annotations

import re

import pytest

from mailrelay.errors import (
    CODES,
    ConfigError,
    MailrelayError,
    ProviderError,
    ValidationError,
    lookup,
    scrub_addresses,
)


def test_codes_are_stable_snake_case_with_a_decision() -> None:
    for code, entry in CODES.items():
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", code)
        assert entry.code == code and entry.summary
    assert not CODES["invalid_recipient"].retryable
    assert CODES["rate_limited"].retryable


def test_unknown_code_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown error code"):
        lookup("nope")


def test_validation_errors_must_be_permanent() -> None:
    with pytest.raises(ValueError, match="retryable"):
        ValidationError("rate_limited", "x")


def test_str_names_provider_status_and_truncates() -> None:
    err = ProviderError("provider_unavailable", "x" * 1000, provider="gmail", status=503)
    text = str(err)
    assert text.startswith("[gmail HTTP 503] provider_unavailable: ")
    assert len(text) < 400 and err.retryable


def test_config_errors_stand_outside_the_retry_hierarchy() -> None:
    assert not issubclass(ConfigError, MailrelayError)


@pytest.mark.parametrize(("text", "expected"), [
    # Graph's ErrorInvalidRecipients, as Exchange words it.
    ("ErrorInvalidRecipients: At least one recipient isn't valid., Recipient "
     "'ada.lovelace@example.invalid' isn't resolved.",
     "ErrorInvalidRecipients: At least one recipient isn't valid., Recipient '…' isn't resolved."),
    ("Invalid To header: 'x+tag@mail.example.INVALID'", "Invalid To header: '…'"),
    ("550 5.1.1 <bob@example.org>: Recipient address rejected", "550 5.1.1 <…>: Recipient address rejected"),
    ("two: a@b.c, c@d.e; done", "two: …, …; done"),
    ("no address here", "no address here"),
])
def test_addresses_are_scrubbed_from_every_error_detail(text: str, expected: str) -> None:
    assert scrub_addresses(text) == expected
    # Whoever builds the error: what is stored (detail) and logged (str) names nobody.
    for err in (ProviderError("invalid_recipient", text, provider="microsoft", status=400),
                MailrelayError("internal_error", text)):
        assert err.detail == expected and "@" not in str(err) and "@" not in repr(err)
