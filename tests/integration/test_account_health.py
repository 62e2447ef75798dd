"""`accounts check` against the emulator: each failure kind named in plain words, and the
health columns that `accounts list` shows kept by real deliveries."""

from __future__ import annotations

import json
from typing import Any

from click.testing import CliRunner

from mailrelay.auth import accounts
from mailrelay.cli import cli
from mailrelay.delivery import deliver
from mailrelay.intake import take_in
from tests.integration.conftest import MS_TENANT, EmulatorHandle

GMAIL_CLIENT, GMAIL_SECRET = "mailrelay-client", "client-secret"
MS_CLIENT, MS_SECRET = "ms-client", "ms-secret"


def check(address: str) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(cli, ["accounts", "check", address, "--json"])
    return result.exit_code, json.loads(result.stdout)


def add_gmail(emulator: EmulatorHandle, address: str, *, granted_to: str | None = None,
              scope: str | None = None, secret: str = GMAIL_SECRET) -> None:
    emulator.client.register_client(GMAIL_CLIENT, GMAIL_SECRET)
    refresh = emulator.client.grant(GMAIL_CLIENT, granted_to or address, scope)
    accounts.add("gmail", address, client_id=GMAIL_CLIENT, client_secret=secret,
                 refresh_token=refresh)


def add_microsoft(emulator: EmulatorHandle, address: str, *, tenant: str = MS_TENANT,
                  scope: str | None = None) -> None:
    emulator.client.ms_register_app(MS_CLIENT, MS_SECRET, MS_TENANT)
    refresh = emulator.client.ms_grant(MS_CLIENT, address, scope)
    accounts.add("microsoft", address, client_id=MS_CLIENT, tenant=tenant,
                 client_secret=MS_SECRET, refresh_token=refresh)


def test_a_healthy_account_checks_ok(emulator: EmulatorHandle, gmail_account: str) -> None:
    code, result = check(gmail_account)
    assert (code, result["ok"], result["kind"]) == (0, True, "ok")
    stats = emulator.client.stats()["requests"]
    assert stats.get("google.token") == 1 and stats.get("gmail.profile") == 1
    assert stats.get("gmail.list") == 1  # the exactly-once lookup was tried too


def test_revoked_grant(emulator: EmulatorHandle, gmail_account: str) -> None:
    emulator.client.revoke(email=gmail_account)
    code, result = check(gmail_account)
    assert (code, result["kind"], result["state"]) == (1, "revoked", "reauth_required")
    assert "mailrelay auth reconnect" in result["diagnosis"]


def test_wrong_client_secret(emulator: EmulatorHandle, clean_db: None, clean_redis: None) -> None:
    add_gmail(emulator, "ada@example.com", secret="not-the-secret")
    code, result = check("ada@example.com")
    assert (code, result["kind"], result["code"]) == (1, "invalid_client", "invalid_credentials")


def test_wrong_tenant(emulator: EmulatorHandle, clean_db: None, clean_redis: None) -> None:
    add_microsoft(emulator, "bob@contoso.example", tenant="no-such-tenant")
    code, result = check("bob@contoso.example")
    assert (code, result["kind"]) == (1, "wrong_tenant")
    assert "tenant is wrong" in result["diagnosis"]


def test_missing_scope_microsoft(emulator: EmulatorHandle, clean_db: None, clean_redis: None) -> None:
    add_microsoft(emulator, "cy@contoso.example", scope="Mail.Send")  # no Mail.ReadWrite
    code, result = check("cy@contoso.example")
    assert (code, result["kind"]) == (1, "missing_scope")
    assert "65001" in result["detail"]  # Entra: no consent to a scope the refresh asks for


def test_missing_scope_gmail(emulator: EmulatorHandle, clean_db: None, clean_redis: None) -> None:
    add_gmail(emulator, "dee@example.com", scope="https://www.googleapis.com/auth/gmail.send")
    code, result = check("dee@example.com")
    assert (code, result["kind"]) == (1, "missing_scope")


def test_mailbox_not_enabled_for_rest(emulator: EmulatorHandle, ms_account: str) -> None:
    emulator.client.inject(endpoint="graph.list", status=404, reason="MailboxNotEnabledForRESTAPI")
    code, result = check(ms_account)
    assert (code, result["kind"]) == (1, "mailbox_not_enabled")
    assert "not enabled for the REST API" in result["diagnosis"]


def test_grant_of_another_mailbox(emulator: EmulatorHandle, clean_db: None, clean_redis: None) -> None:
    add_gmail(emulator, "eve@example.com", granted_to="mallory@example.com")
    code, result = check("eve@example.com")
    assert (code, result["kind"]) == (1, "wrong_mailbox")
    assert "mallory@example.com" in result["detail"]


def _send_one(address: str, subject: str) -> str:
    accepted = take_in({"from": address, "to": ["x@example.net"], "subject": subject, "text": "hi"},
                       request_id=None, actor="test")
    assert accepted.result.state == "queued"
    deliver(accepted.result.message_id, worker="test")
    return accepted.result.message_id


def test_send_as_denied_is_read_from_the_last_failed_send(emulator: EmulatorHandle,
                                                          ms_account: str) -> None:
    emulator.client.inject(endpoint="graph.sendmail", status=403, reason="ErrorSendAsDenied")
    _send_one(ms_account, "denied")
    row = next(a for a in accounts.list_all() if a["address"] == ms_account)
    assert (row["consecutive_failures"], row["last_error_code"]) == (1, "permission_denied")
    code, result = check(ms_account)
    assert (code, result["kind"]) == (1, "send_as_denied")
    assert "may not send as this mailbox" in result["diagnosis"]
    emulator.client.reset()
    _send_one(ms_account, "allowed again")  # a success clears the failure streak
    assert check(ms_account)[1]["kind"] == "ok"


def test_accounts_list_shows_health_and_rate_limits(emulator: EmulatorHandle, gmail_account: str) -> None:
    _send_one(gmail_account, "one")
    CliRunner().invoke(cli, ["accounts", "set", gmail_account, "--rate-limit", "60"])
    result = CliRunner().invoke(cli, ["accounts", "list", "--json"])
    (row,) = json.loads(result.output)
    assert row["last_success_at"] and row["last_refresh_at"]
    assert row["consecutive_failures"] == 0
    assert (row["rate_limit_per_minute"], row["rate_limit_per_minute_default"],
            row["rate_limit_per_minute_effective"]) == (60, 150, 60)
    table = CliRunner().invoke(cli, ["accounts", "list"]).output
    assert "60/min" in table and gmail_account in table
    back = CliRunner().invoke(cli, ["accounts", "set", gmail_account, "--rate-limit", "default",
                                    "--json"])
    assert json.loads(back.output)["rate_limit_per_minute_effective"] == 150


def test_missing_application_permission(emulator: EmulatorHandle, clean_db: None,
                                        clean_redis: None) -> None:
    emulator.client.ms_register_app("app-only", "app-secret", MS_TENANT, roles=["Mail.Send"])
    accounts.add("microsoft", "robot@contoso.example", client_id="app-only", tenant=MS_TENANT,
                 app_only=True, client_secret="app-secret")
    code, result = check("robot@contoso.example")
    assert (code, result["kind"]) == (1, "missing_scope")
    assert "ErrorAccessDenied" in result["detail"]  # Graph refused the Sent Items probe
