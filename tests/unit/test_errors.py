from __future__ import annotations

import re

import pytest

from mailrelay.errors import CODES, ConfigError, MailrelayError, ProviderError, ValidationError, lookup


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
