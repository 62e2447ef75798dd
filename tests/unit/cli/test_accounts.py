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
from tests.unit.cli.conftest import snapshot

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


# --- --dry-run: the real command's checks and exit codes, nothing changed --------------------

def _both(*args: str, env: dict[str, str] | None = None) -> int:
    """The exit code of a dry run, after checking the real command exits the same."""
    dry = run(*args, "--dry-run", env=env)
    real = run(*args, env=env)
    assert dry[0] == real[0], (dry, real)
    return dry[0]


def test_set_dry_run_shows_old_and_new_and_changes_nothing(env: dict[str, str]) -> None:
    run("accounts", "add", "sink", "a@example.com")
    before = snapshot()
    code, out = run("accounts", "set", "a@example.com", "--rate-limit", "30", "--html-policy",
                    "off", "--dry-run")
    assert code == 0, out
    assert ("a@example.com: would set rate limit no limit (provider default) -> 30/min, "
            "HTML policy global -> off") in out
    code, out = run("accounts", "set", "A@example.com", "--rate-limit", "30", "--html-policy",
                    "off", "--dry-run", "--json")
    assert code == 0, out
    would = json.loads(out)
    assert would["dry_run"] is True
    assert would["changes"] == {"rate_limit_per_minute": {"from": None, "to": 30},
                                "html_policy": {"from": None, "to": "off"}}
    assert snapshot() == before
    # What it said is what the real command does and prints.
    code, out = run("accounts", "set", "a@example.com", "--rate-limit", "30", "--html-policy",
                    "off", "--json")
    assert code == 0, out
    assert json.loads(out) == {k: v for k, v in would.items() if k not in ("dry_run", "changes")}
    assert snapshot() != before


@pytest.mark.parametrize(("args", "code"), [
    (("nobody@example.com", "--rate-limit", "30"), 3),
    (("a@example.com",), 2),
    (("a@example.com", "--rate-limit", "0"), 2),
    (("a@example.com", "--html-policy", "strict"), 2),
])
def test_set_dry_run_fails_as_the_real_command(env: dict[str, str], args: tuple[str, ...],
                                               code: int) -> None:
    run("accounts", "add", "sink", "a@example.com")
    before = snapshot()
    assert _both("accounts", "set", *args) == code
    assert snapshot() == before


def test_remove_dry_run_says_removed_or_disabled_and_changes_nothing(env: dict[str, str]) -> None:
    from mailrelay.message import validate
    from mailrelay.store import outbox

    run("accounts", "add", "sink", "a@example.com")
    run("accounts", "add", "gmail", "b@example.com", "--client-id", "cid", env=env)
    ref = outbox.find_account("b@example.com")
    assert ref is not None
    outbox.accept(validate({"from": "b@example.com", "to": ["x@example.org"], "text": "t"}), ref,
                  request_id=None, actor="t", size_bytes=1)
    before = snapshot()
    assert run("accounts", "remove", "a@example.com", "--dry-run") == (
        0, "a@example.com: would be removed (dry run: nothing changed)\n")
    code, out = run("accounts", "remove", "b@example.com", "--force", "--dry-run")
    assert code == 0 and "would be disabled and its secrets erased" in out
    code, out = run("accounts", "remove", "B@example.com", "--force", "--dry-run", "--json")
    assert code == 0 and json.loads(out) == {"address": "b@example.com", "done": "disabled",
                                             "dry_run": True}
    code, out = run("accounts", "remove", "b@example.com", "--dry-run")  # messages, no --force
    assert code == 1 and "--force" in out
    assert run("accounts", "remove", "nobody@example.com", "--dry-run")[0] == 3
    assert snapshot() == before
    assert accounts.credentials("b@example.com").refresh_token == REFRESH
    # The real command agrees, code for code.
    assert run("accounts", "remove", "b@example.com")[0] == 1
    assert run("accounts", "remove", "nobody@example.com")[0] == 3
    assert run("accounts", "remove", "b@example.com", "--force", "--json")[1].count('"disabled"') == 1


def test_rotate_key_dry_run_reads_every_secret_and_stores_nothing(
        env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert run("accounts", "add", "gmail", "o@example.com", "--client-id", "cid", env=env)[0] == 0
    old = get_settings().secret_key
    new = Fernet.generate_key().decode()
    raw = _raw_row()
    monkeypatch.setenv("MAILRELAY_SECRET_KEY", f"{new},{old}")
    before = snapshot()
    code, out = run("accounts", "rotate-key", "--dry-run")
    assert code == 0 and "would re-encrypt 2 secrets; every one is readable" in out
    code, out = run("accounts", "rotate-key", "--dry-run", "--json")
    assert code == 0 and json.loads(out) == {"reencrypted": 2, "dry_run": True}
    assert snapshot() == before and _raw_row() == raw
    # A key ring that reads none of them: the dry run fails as the real run does.
    monkeypatch.setenv("MAILRELAY_SECRET_KEY", new)
    assert _seen_code("accounts", "rotate-key", "--dry-run") == 78
    assert _seen_code("accounts", "rotate-key") == 78
    assert _raw_row() == raw


def _seen_code(*args: str) -> int:
    """The exit code `mailrelay` shows for an exception CliRunner caught: the one edge
    (exits.run_guarded) turns it into a code through failures.explain."""
    from mailrelay.cli.failures import explain

    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli, list(args))
    finally:
        get_settings.cache_clear()
    if result.exception is None or isinstance(result.exception, SystemExit):
        return result.exit_code
    failure = explain(result.exception)
    return 70 if failure is None else failure.code


def test_add_dry_run_checks_as_add_does_and_stores_nothing(env: dict[str, str]) -> None:
    before = snapshot()
    code, out = run("accounts", "add", "gmail", "New@example.com", "--client-id", "cid",
                    "--dry-run", "--json", env=env)
    assert code == 0, out
    shown = json.loads(out)
    assert (shown["address"], shown["provider"], shown["dry_run"]) == ("new@example.com", "gmail",
                                                                       True)
    assert SECRET not in out and REFRESH not in out
    assert snapshot() == before
    assert _both("accounts", "add", "gmail", "x@example.com", env=env) == 2  # no --client-id
    assert run("accounts", "add", "sink", "a@example.com")[0] == 0
    before = snapshot()
    assert _both("accounts", "add", "sink", "a@example.com") == 1  # exists
    assert snapshot() == before


# --- auth connect / reconnect --dry-run -----------------------------------------------------

@pytest.fixture
def nothing_opened(monkeypatch: pytest.MonkeyPatch) -> None:
    """A dry run that listened or opened a browser fails the test."""
    import webbrowser

    from mailrelay.auth import consent

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a dry run listened or opened a browser")

    monkeypatch.setattr(consent, "LoopbackReceiver", refuse)
    monkeypatch.setattr(webbrowser, "open", refuse)


def test_reconnect_dry_run_checks_the_account_and_opens_nothing(
        env: dict[str, str], clean_redis: None, nothing_opened: None) -> None:
    assert run("accounts", "add", "gmail", "g@example.com", "--client-id", "cid", env=env)[0] == 0
    assert run("accounts", "add", "sink", "s@example.com")[0] == 0
    before = snapshot()
    code, out = run("auth", "reconnect", "g@example.com", "--dry-run")
    assert code == 0, out
    assert "would connect g@example.com (gmail, client id cid)" in out
    assert "listen on 127.0.0.1" in out and "give the account the new grant" in out
    code, out = run("auth", "reconnect", "G@example.com", "--dry-run", "--json")
    assert code == 0, out
    assert json.loads(out) == {"address": "g@example.com", "provider": "gmail",
                               "client_id": "cid", "tenant": None, "created": False,
                               "listen": "127.0.0.1", "timeout": 300.0, "dry_run": True}
    assert SECRET not in out and REFRESH not in out
    assert snapshot() == before
    # Refused as the real reconnect refuses (which stops before any consent too).
    assert _both("auth", "reconnect", "nobody@example.com") == 3
    assert _both("auth", "reconnect", "s@example.com") == 2
    assert snapshot() == before


def test_connect_dry_run_names_what_it_would_create_and_opens_nothing(
        env: dict[str, str], clean_redis: None, nothing_opened: None) -> None:
    assert run("accounts", "add", "sink", "s@example.com")[0] == 0
    before = snapshot()
    code, out = run("auth", "connect", "gmail", "n@example.com", "--client-id", "cid",
                    "--dry-run", env=env)
    assert code == 0, out
    assert "would connect n@example.com (gmail, client id cid)" in out
    assert "create the account" in out and SECRET not in out
    assert snapshot() == before
    # Another provider's account: the real connect refuses it before sending anyone to
    # the consent page, with the same code.
    assert _both("auth", "connect", "gmail", "s@example.com", "--client-id", "cid", env=env) == 1
    assert _both("auth", "connect", "gmail", "n@example.com", "--client-id", "cid") == 2  # no secret
    assert _both("auth", "connect", "gmail", "Bad <n@example.com>", "--client-id", "cid",
                 env=env) == 2
    assert snapshot() == before
