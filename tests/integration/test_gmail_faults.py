"""Gmail's bad-input and fault cases, one adapter call each, against the real emulator."""

from __future__ import annotations

import base64
import datetime as dt
import os
from collections.abc import Iterator

import pytest

from mailrelay.auth.credentials import Credentials
from mailrelay.config import get_settings
from mailrelay.devstack import free_port
from mailrelay.errors import ProviderError
from mailrelay.message import make_message_id, validate
from mailrelay.providers.base import Outbound
from mailrelay.providers.gmail import GmailAdapter
from tests.integration.conftest import EmulatorHandle

pytestmark = pytest.mark.integration


@pytest.fixture
def creds(emulator: EmulatorHandle) -> Credentials:
    emulator.client.register_client("cid", "csecret")
    refresh = emulator.client.grant("cid", "sender@example.com")
    return Credentials(id=1, address="sender@example.com", provider="gmail", state="active",
                       client_id="cid", tenant=None, app_only=False, client_secret="csecret",
                       refresh_token=refresh, rate_limit_per_minute=None)


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    yield monkeypatch
    monkeypatch.undo()
    get_settings.cache_clear()


def _outbound() -> Outbound:
    message = validate({"from": "sender@example.com", "to": ["ada@example.org"], "text": "hi"})
    return Outbound(message=message, message_id="m1", date=dt.datetime.now(dt.UTC), attempt_number=1,
                    rfc822_message_id=make_message_id(os.urandom(16).hex(), "example.com"))


class Tokens:
    def __init__(self, token: str) -> None:
        self.token = token

    def get(self) -> str:
        return self.token

    def renew(self, rejected: str) -> str:
        raise AssertionError("no renewal expected")


def test_refresh_then_send_works(emulator: EmulatorHandle, creds: Credentials) -> None:
    adapter = GmailAdapter()
    grant = adapter.refresh(creds)
    assert grant.access_token and grant.expires_at > dt.datetime.now(dt.UTC).timestamp() + 60
    assert adapter.send(_outbound(), Tokens(grant.access_token)).provider_message_id


def test_unreachable_token_endpoint_is_a_retryable_network_error(
        emulator: EmulatorHandle, creds: Credentials, settings_env: pytest.MonkeyPatch) -> None:
    settings_env.setenv("MAILRELAY_GOOGLE_TOKEN_URL", f"https://127.0.0.1:{free_port()}/token")
    get_settings.cache_clear()
    with pytest.raises(ProviderError) as err:
        GmailAdapter().refresh(creds)
    assert (err.value.code, err.value.retryable) == ("network_error", True)
    assert creds.client_secret not in str(err.value) and creds.refresh_token not in str(err.value)  # type: ignore[operator]


def test_slow_token_endpoint_times_out(emulator: EmulatorHandle, creds: Credentials,
                                       settings_env: pytest.MonkeyPatch) -> None:
    settings_env.setenv("MAILRELAY_PROVIDER_TIMEOUT", "1")
    get_settings.cache_clear()
    emulator.client.inject(endpoint="google.token", latency_ms=2500, count=1)
    with pytest.raises(ProviderError) as err:
        GmailAdapter().refresh(creds)
    assert err.value.retryable and err.value.code == "network_error"


def test_wrong_client_secret_and_revoked_grant(emulator: EmulatorHandle, creds: Credentials) -> None:
    import dataclasses

    wrong = dataclasses.replace(creds, client_secret="nope")
    with pytest.raises(ProviderError) as err:
        GmailAdapter().refresh(wrong)
    assert (err.value.code, err.value.retryable) == ("invalid_credentials", False)
    emulator.client.revoke(email=creds.address)
    with pytest.raises(ProviderError) as err:
        GmailAdapter().refresh(creds)
    assert (err.value.code, err.value.retryable) == ("auth_revoked", False)


def test_untrusted_certificate_is_a_network_error_that_sent_nothing(
        emulator: EmulatorHandle, creds: Credentials, settings_env: pytest.MonkeyPatch) -> None:
    token = GmailAdapter().refresh(creds).access_token
    settings_env.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    with pytest.raises(ProviderError) as err:
        GmailAdapter().send(_outbound(), Tokens(token))
    assert err.value.code == "network_error" and not err.value.sent_unknown
    assert "TLS" in str(err.value)


def test_a_message_over_35_mb_is_rejected_at_intake(gmail_account: str) -> None:
    from mailrelay.intake import take_in
    from mailrelay.store import outbox

    # 26 MiB of attachment is ~36.8 MB of MIME (base64 and line breaks): over Gmail's 35 MiB,
    # under mailrelay's own 36 MiB, so the provider's capability is what refuses it.
    big = base64.b64encode(os.urandom(26 * 1024 * 1024)).decode()
    accepted = take_in({"from": gmail_account, "to": ["ada@example.org"], "text": "x",
                        "attachments": [{"filename": "x.bin", "content_type": "application/octet-stream",
                                         "content": big}]}, request_id=None, actor="test")
    assert (accepted.result.state, accepted.result.error_code) == ("rejected", "message_too_large")
    info = outbox.status(accepted.result.message_id)
    assert info is not None and "gmail allows" in info["error_detail"]


def test_accounts_check_says_what_is_wrong(emulator: EmulatorHandle, gmail_account: str) -> None:
    from click.testing import CliRunner

    from mailrelay.cli import cli

    ok = CliRunner().invoke(cli, ["accounts", "check", gmail_account, "--json"])
    assert ok.exit_code == 0 and '"ok": true' in ok.output
    emulator.client.revoke(email=gmail_account)
    bad = CliRunner().invoke(cli, ["accounts", "check", gmail_account, "--json"])
    assert bad.exit_code == 1
    assert '"code": "auth_revoked"' in bad.output and '"kind": "revoked"' in bad.output
    assert "mailrelay auth reconnect" in bad.output
    assert '"state": "reauth_required"' in bad.output
