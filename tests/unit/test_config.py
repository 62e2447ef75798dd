from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mailrelay import config
from mailrelay.errors import ConfigError


def test_defaults_load_and_hide_secrets() -> None:
    settings = config.load({"MAILRELAY_SECRET_KEY": "s3cr3t-value", "MAILRELAY_OPERATOR": "rt-value"})
    assert settings.broker_url == "redis://127.0.0.1:6379/0"
    assert settings.database_url.startswith("sqlite:///") and settings.database_url.endswith("mailrelay.db")
    assert settings.lease_seconds == 20  # short: renewed while a send runs
    text = repr(settings)
    assert "s3cr3t-value" not in text and "rt-value" in text


@pytest.mark.parametrize(("env", "value", "needle"), [
    ("MAILRELAY_LEASE_SECONDS", "soon", "expected a whole number"),
    ("MAILRELAY_LEASE_SECONDS", "5", "from 10 to 3600"),
    ("MAILRELAY_BROKER_URL", "http://x", "scheme"),
    ("MAILRELAY_DATABASE_URL", "mysql://db/x", "scheme"),
    ("MAILRELAY_LOG_LEVEL", "loud", "one of"),
    ("MAILRELAY_PROVIDER_TIMEOUT", "-1", "from 1"),
])
def test_bad_value_names_the_variable(env: str, value: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.load({env: value})
    assert str(err.value).startswith(env)
    assert needle in str(err.value)


def test_secret_values_are_not_echoed() -> None:
    with pytest.raises(ConfigError) as err:
        config.load({"MAILRELAY_OPERATOR": "x", "MAILRELAY_LEASE_SECONDS": "zz", "MAILRELAY_SECRET_KEY": "k"})
    assert "zz" in str(err.value)


def test_unknown_variable_is_refused_with_a_hint() -> None:
    with pytest.raises(ConfigError, match="did you mean MAILRELAY_BROKER_URL"):
        config.load({"MAILRELAY_BROKER_ULR": "redis://x"})


def test_visibility_timeout_must_cover_lease_and_countdown() -> None:
    with pytest.raises(ConfigError, match="MAILRELAY_VISIBILITY_TIMEOUT"):
        config.load({"MAILRELAY_VISIBILITY_TIMEOUT": "150", "MAILRELAY_LEASE_SECONDS": "120"})


def test_a_lease_may_be_shorter_than_a_provider_call() -> None:
    """Leases are renewed while a send runs (mailrelay.leases), so a short one is fine."""
    settings = config.load({"MAILRELAY_LEASE_SECONDS": "10", "MAILRELAY_PROVIDER_TIMEOUT": "30"})
    assert settings.lease_seconds == 10


def test_every_setting_is_described() -> None:
    rows = config.describe()
    assert {row["variable"] for row in rows} == {s.env for s in config.TABLE}
    assert all(row["meaning"] for row in rows)


def test_passwords_in_urls_never_show() -> None:
    with pytest.raises(ConfigError) as err:
        config.load({"MAILRELAY_DATABASE_URL": "mysql://app:S3cretPw@db/mailrelay"})
    assert "S3cretPw" not in str(err.value) and "app:***@db" in str(err.value)
    settings = config.load({"MAILRELAY_REDIS_URL": "redis://:hunter2@cache:6379/2"})
    assert "hunter2" not in repr(settings) and "redis://:***@cache:6379/2" in repr(settings)


def test_idempotency_keys_outlive_retries() -> None:
    with pytest.raises(ConfigError, match="MAILRELAY_IDEMPOTENCY_RETENTION must be at least"):
        config.load({"MAILRELAY_RETRY_MAX_AGE": "7200", "MAILRELAY_IDEMPOTENCY_RETENTION": "3600"})
    assert config.load({"MAILRELAY_IDEMPOTENCY_RETENTION": "172800"}).idempotency_retention == 172800


def test_retention_defaults_keep_payloads_a_week_and_rows_ninety_days() -> None:
    settings = config.load({})
    assert (settings.payload_retention, settings.row_retention) == (7 * 86400, 90 * 86400)
    shorter = config.load({"MAILRELAY_PAYLOAD_RETENTION": "3600",
                           "MAILRELAY_ROW_RETENTION": "86400"})
    assert (shorter.payload_retention, shorter.row_retention) == (3600, 86400)


@pytest.mark.parametrize(("values", "message"), [
    # The payload goes first, or its retention would promise replays that cannot happen.
    ({"MAILRELAY_PAYLOAD_RETENTION": "864000", "MAILRELAY_ROW_RETENTION": "86400"},
     "MAILRELAY_ROW_RETENTION must be at least MAILRELAY_PAYLOAD_RETENTION"),
    # A row deleted while its key is remembered would let a repeat become a second send.
    ({"MAILRELAY_PAYLOAD_RETENTION": "3600", "MAILRELAY_ROW_RETENTION": "7200",
      "MAILRELAY_IDEMPOTENCY_RETENTION": "86400"},
     "MAILRELAY_ROW_RETENTION must be at least MAILRELAY_IDEMPOTENCY_RETENTION"),
])
def test_rows_outlive_their_payload_and_their_idempotency_key(values: dict[str, str],
                                                               message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config.load(values)


@pytest.mark.parametrize(("env", "value", "needle"), [
    ("MAILRELAY_PAYLOAD_RETENTION", "7d", "expected a whole number"),
    ("MAILRELAY_PAYLOAD_RETENTION", "60", "from 3600 to"),
    ("MAILRELAY_ROW_RETENTION", "-1", "from 3600 to"),
    ("MAILRELAY_ROW_RETENTION", str(100 * 365 * 86400), "to 315360000"),
])
def test_a_bad_retention_names_its_variable(env: str, value: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.load({env: value})
    assert str(err.value).startswith(f"{env}=") and needle in str(err.value)


def test_default_outbox_is_one_absolute_file_whatever_the_working_directory(tmp_path: Path) -> None:
    """An intake started in one directory and a worker in another, both without
    MAILRELAY_DATABASE_URL, must share one outbox, not make one SQLite file each."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MAILRELAY_") and k != "XDG_DATA_HOME"}
    env["HOME"] = str(tmp_path / "home")
    urls = []
    for place in ("intake-dir", "worker-dir"):
        cwd = tmp_path / place
        cwd.mkdir()
        done = subprocess.run(
            [sys.executable, "-c", "from mailrelay.config import get_settings; "
                                   "print(get_settings().database_url)"],
            cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=True)
        urls.append(done.stdout.strip())
    assert urls[0] == urls[1] == f"sqlite:///{tmp_path / 'home/.local/share/mailrelay/mailrelay.db'}"


def test_the_default_outbox_directory_is_made_on_first_use(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy import text

    from mailrelay.store.db import make_engine

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    engine = make_engine(f"sqlite:///{config.default_sqlite_path()}")
    with engine.connect() as conn:
        assert conn.execute(text("select 1")).scalar() == 1
    engine.dispose()
    assert (tmp_path / "data" / "mailrelay" / "mailrelay.db").exists()


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "postgresql+psycopg2"])
def test_postgresql_urls_go_through_psycopg2(scheme: str) -> None:
    settings = config.load({"MAILRELAY_DATABASE_URL": f"{scheme}://app:pw@db:5432/mailrelay"})
    assert settings.database_url == "postgresql+psycopg2://app:pw@db:5432/mailrelay"


def test_a_postgresql_driver_not_shipped_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError) as err:
        config.load({"MAILRELAY_DATABASE_URL": "postgresql+psycopg://app:S3cretPw@db/mailrelay"})
    message = str(err.value)
    assert message.startswith("MAILRELAY_DATABASE_URL=") and "psycopg2" in message
    assert "S3cretPw" not in message and "\n" not in message


def test_the_default_outcome_target_is_both_names_or_neither_and_of_sane_shape() -> None:
    settings = config.load({"MAILRELAY_NOTIFY_TASK": "billing.mail_outcome",
                            "MAILRELAY_NOTIFY_QUEUE": "billing.events"})
    assert (settings.notify_task, settings.notify_queue) == ("billing.mail_outcome",
                                                            "billing.events")
    with pytest.raises(ConfigError, match="go together"):
        config.load({"MAILRELAY_NOTIFY_TASK": "billing.mail_outcome"})
    with pytest.raises(ConfigError, match="MAILRELAY_NOTIFY_QUEUE"):
        config.load({"MAILRELAY_NOTIFY_TASK": "t", "MAILRELAY_NOTIFY_QUEUE": "mailrelay.intake"})
    with pytest.raises(ConfigError, match="MAILRELAY_NOTIFY_TASK"):
        config.load({"MAILRELAY_NOTIFY_TASK": "not a name", "MAILRELAY_NOTIFY_QUEUE": "q"})
