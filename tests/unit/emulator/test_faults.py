from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from mailrelay.emulator import Emulator, EmulatorClient
from mailrelay.emulator.client import EmulatorError
from tests.unit.emulator.conftest import Account, message


def test_status_with_count_then_success(account: Account, control: EmulatorClient) -> None:
    control.inject(endpoint="gmail.send", status=429, count=2)
    for _ in range(2):
        response = account.send(message())
        assert response.status_code == 429
        error = response.json()["error"]
        assert error["status"] == "RESOURCE_EXHAUSTED" and error["code"] == 429
        assert error["errors"][0]["reason"] in ("rateLimitExceeded", "userRateLimitExceeded")
    assert account.send(message()).status_code == 200
    assert control.faults() == []
    assert len(control.messages()) == 1  # refused sends delivered nothing


def test_probability_one_always_fires_and_retry_after(account: Account, control: EmulatorClient) -> None:
    control.inject(endpoint="gmail.send", status=503, probability=1.0, retry_after=7)
    for _ in range(3):
        response = account.send(message())
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "7"
        error = response.json()["error"]
        assert error["status"] == "UNAVAILABLE" and error["errors"][0]["reason"] == "backendError"
    control.reset()
    assert account.send(message()).status_code == 200


def test_probability_zero_never_fires(account: Account, control: EmulatorClient) -> None:
    control.inject(endpoint="*", status=500, probability=0.0)
    assert account.send(message()).status_code == 200


@pytest.mark.parametrize(("status", "reason", "status_name", "domain"), [
    (403, "dailyLimitExceeded", "PERMISSION_DENIED", "usageLimits"),
    (403, "insufficientPermissions", "PERMISSION_DENIED", "global"),
    (429, "userRateLimitExceeded", "RESOURCE_EXHAUSTED", "usageLimits"),
    (500, None, "INTERNAL", "global"),
])
def test_reasons_per_status(account: Account, control: EmulatorClient, status: int, reason: str | None,
                            status_name: str, domain: str) -> None:
    control.inject(endpoint="gmail.list", status=status, reason=reason, count=1)
    error = account.get("messages", q="rfc822msgid:x@y").json()["error"]
    assert error["code"] == status and error["status"] == status_name
    assert error["errors"][0]["reason"] == (reason or "backendError")
    assert error["errors"][0]["domain"] == domain and error["message"]


def test_token_endpoint_faults_use_the_oauth_shape(account: Account, control: EmulatorClient) -> None:
    control.inject(endpoint="google.token", status=503, count=1, retry_after=3)
    response = account.token()
    assert response.status_code == 503 and response.headers["Retry-After"] == "3"
    assert response.json()["error"] == "temporarily_unavailable" and "error_description" in response.json()
    assert account.token().status_code == 200


def test_latency(account: Account, control: EmulatorClient) -> None:
    control.inject(endpoint="gmail.profile", latency_ms=400, count=1)
    started = time.monotonic()
    assert account.get("profile").status_code == 200
    assert time.monotonic() - started >= 0.4
    started = time.monotonic()
    assert account.get("profile").status_code == 200
    assert time.monotonic() - started < 0.4


def test_drop_closes_without_answering(account: Account, control: EmulatorClient) -> None:
    control.inject(endpoint="gmail.send", drop=True, count=1)
    with pytest.raises(requests.ConnectionError):
        account.send(message())
    assert control.messages() == []
    assert account.send(message()).status_code == 200  # the server carries on


def test_after_send_delivers_and_then_fails(account: Account, control: EmulatorClient) -> None:
    control.inject(endpoint="gmail.send", status=500, after_send=True, count=1)
    raw = message(message_id="<lost-answer@example.com>")
    response = account.send(raw)
    assert response.status_code == 500
    # The provider accepted it: it is in the inbox and findable by its Message-ID.
    assert len(control.messages("ada@example.org")) == 1
    found = account.get("messages", q="rfc822msgid:<lost-answer@example.com>").json()
    assert found["resultSizeEstimate"] == 1


def test_after_send_with_drop(account: Account, control: EmulatorClient) -> None:
    control.inject(endpoint="gmail.upload", drop=True, after_send=True, count=1)
    with pytest.raises(requests.ConnectionError):
        account.upload_media(message())
    assert len(control.messages("ada@example.org")) == 1


def test_rules_scoped_to_a_mailbox(emulator: Emulator, account: Account, control: EmulatorClient) -> None:
    other = Account(emulator, "other@example.com")
    control.inject(endpoint="*", status=429, mailbox="OTHER@example.com")
    assert account.send(message()).status_code == 200
    assert other.send(message(**{"from": "other@example.com"})).status_code == 429
    assert other.token().status_code == 429  # the token endpoint acts for the grant's mailbox


def test_the_control_api_is_never_faulted(account: Account, control: EmulatorClient) -> None:
    control.inject(endpoint="*", drop=True)
    assert control.stats()["requests"]
    control.reset()
    assert account.send(message()).status_code == 200


def test_bad_rules_are_refused(control: EmulatorClient) -> None:
    for rule in ({"endpoint": "gmail.send"}, {"endpoint": "gmail.send", "status": 99},
                 {"endpoint": "gmail.list", "status": 500, "after_send": True},
                 {"endpoint": "gmail.send", "status": 500, "drop": True},
                 {"endpoint": "gmail.send", "status": 500, "probability": 2},
                 {"endpoint": "gmail.send", "status": 500, "colour": "red"}):
        with pytest.raises(EmulatorError, match="400"):
            control.inject(**rule)


def test_counts_and_max_concurrency(account: Account, control: EmulatorClient) -> None:
    control.reset()
    control.inject(endpoint="gmail.profile", latency_ms=300)
    with ThreadPoolExecutor(max_workers=6) as pool:
        statuses = list(pool.map(lambda _: account.get("profile").status_code, range(6)))
    assert statuses == [200] * 6
    stats = control.stats()
    assert stats["requests"]["gmail.profile"] == 6
    assert stats["max_concurrency"]["gmail.profile"] >= 6
    assert stats["max_concurrency"]["*"] >= 6
    control.reset()
    after = control.stats()
    assert "gmail.profile" not in after["requests"] and after["requests"]["emulator.stats"] == 1
