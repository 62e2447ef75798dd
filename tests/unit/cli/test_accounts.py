"""`mailrelay accounts`: secrets from the environment only, encrypted at rest, rotatable."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from cryptography.fernet import Fernet
from sqlalchemy import select

from mailrelay.auth import accounts
from mailrelay.cli import cli
from mailrelay.config import get_settings
from mailrelay.store.db import get_engine
from mailrelay.store.models import ACCOUNTS

SECRET, REFRESH = "very-secret-client-value", "1//refresh-token-value"


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    # Settings are read once per process; each `mailrelay` run is a new one, so start fresh.
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli, list(args), env=env)
    finally:
        get_settings.cache_clear()
    return result.exit_code, result.output


@pytest.fixture
def env(clean_db: None, secret_key: str) -> dict[str, str]:
    return {"MAILRELAY_CLIENT_SECRET": SECRET, "MAILRELAY_REFRESH_TOKEN": REFRESH}


def _raw_row() -> bytes:
    with get_engine().connect() as conn:
        row = conn.execute(select(ACCOUNTS.c.client_secret_enc, ACCOUNTS.c.refresh_token_enc)).one()
    return bytes(row[0]) + bytes(row[1])


def test_add_reads_secrets_from_the_environment_and_encrypts_them(env: dict[str, str]) -> None:
    code, out = run("accounts", "add", "gmail", "Owner@Example.com", "--client-id", "cid", "--json", env=env)
    assert code == 0, out
    assert json.loads(out)["address"] == "owner@example.com"
    raw = _raw_row()
    assert SECRET.encode() not in raw and REFRESH.encode() not in raw
    creds = accounts.credentials("owner@example.com")
    assert (creds.client_secret, creds.refresh_token) == (SECRET, REFRESH)
    code, out = run("accounts", "list", "--json")
    assert code == 0 and SECRET not in out and REFRESH not in out
    assert json.loads(out)[0]["state"] == "active"


def test_without_secrets_and_without_a_terminal_it_refuses(clean_db: None, secret_key: str) -> None:
    code, out = run("accounts", "add", "gmail", "o@example.com", "--client-id", "cid")
    assert code == 2 and "MAILRELAY_CLIENT_SECRET" in out
    assert accounts.list_all() == []


def test_oauth_accounts_need_a_client_id(env: dict[str, str]) -> None:
    code, out = run("accounts", "add", "gmail", "o@example.com", env=env)
    assert code == 2 and "--client-id" in out


def test_rotate_key_moves_every_secret_to_the_new_key(env: dict[str, str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    assert run("accounts", "add", "gmail", "o@example.com", "--client-id", "cid", env=env)[0] == 0
    old = get_settings().secret_key
    new = Fernet.generate_key().decode()
    monkeypatch.setenv("MAILRELAY_SECRET_KEY", f"{new},{old}")
    get_settings.cache_clear()
    try:
        code, out = run("accounts", "rotate-key")
        assert code == 0 and "re-encrypted 2 secrets" in out
        monkeypatch.setenv("MAILRELAY_SECRET_KEY", new)  # the old key dropped
        get_settings.cache_clear()
        assert accounts.credentials("o@example.com").refresh_token == REFRESH
    finally:
        monkeypatch.setenv("MAILRELAY_SECRET_KEY", old)
        get_settings.cache_clear()


def test_remove_deletes_an_unused_account_and_only_disables_a_used_one(env: dict[str, str]) -> None:
    from mailrelay.message import validate
    from mailrelay.store import outbox

    run("accounts", "add", "sink", "a@example.com")
    assert run("accounts", "remove", "a@example.com") == (0, "a@example.com: removed\n")
    run("accounts", "add", "gmail", "b@example.com", "--client-id", "cid", env=env)
    ref = outbox.find_account("b@example.com")
    assert ref is not None
    outbox.accept(validate({"from": "b@example.com", "to": ["x@example.org"], "text": "t"}), ref,
                  request_id=None, actor="t", size_bytes=1)
    code, out = run("accounts", "remove", "b@example.com")
    assert code == 1 and "--force" in out
    assert run("accounts", "remove", "b@example.com", "--force")[0] == 0
    row = accounts.list_all()[0]
    assert row["state"] == "disabled"
    assert accounts.credentials("b@example.com").refresh_token is None


def test_genkey_prints_a_usable_key() -> None:
    code, out = run("accounts", "genkey")
    assert code == 0
    Fernet(out.strip().encode())


def test_smtp_accounts_take_the_server_and_an_optional_login(env: dict[str, str]) -> None:
    code, out = run("accounts", "add", "smtp", "relay@example.com", "--tenant", "smtp://mail.example.com:587",
                    "--client-id", "relay-user", env=env)
    assert code == 0, out
    creds = accounts.credentials("relay@example.com")
    assert (creds.client_id, creds.client_secret, creds.refresh_token) == ("relay-user", SECRET, None)
    code, out = run("accounts", "add", "smtp", "open@example.com", "--tenant", "smtp+insecure://127.0.0.1:25")
    assert code == 0 and accounts.credentials("open@example.com").client_secret is None
    code, out = run("accounts", "add", "smtp", "bad@example.com")
    assert code == 1 and "--tenant must be the server" in out


def test_remove_rotate_key_and_genkey_take_json(env: dict[str, str]) -> None:
    assert run("accounts", "add", "gmail", "o@example.com", "--client-id", "cid", env=env)[0] == 0
    code, out = run("accounts", "rotate-key", "--json")
    assert code == 0 and json.loads(out) == {"reencrypted": 2}
    code, out = run("accounts", "genkey", "--json")
    assert code == 0 and Fernet(json.loads(out)["key"].encode())
    code, out = run("accounts", "remove", "O@example.com", "--json")
    assert code == 0 and json.loads(out) == {"address": "o@example.com", "done": "removed"}


def test_a_refresh_token_from_elsewhere_is_not_called_checked(env: dict[str, str]) -> None:
    code, out = run("accounts", "add", "gmail", "o@example.com", "--client-id", "cid", env=env)
    assert code == 0
    assert "not tested yet: run `mailrelay accounts check o@example.com`" in out


def test_checking_a_sink_account_claims_no_token(sink_account: str) -> None:
    code, out = run("accounts", "check", sink_account, "--json")
    assert code == 0
    found = json.loads(out)
    assert found["ok"] is True and "token was issued" not in found["diagnosis"]
    assert "nothing to test without sending" in found["diagnosis"]
