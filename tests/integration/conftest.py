from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.processes import Worker

pytestmark = pytest.mark.integration


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []

    def start(queues: str, **kwargs: object) -> Worker:
        worker = Worker(queues, log_dir=tmp_path, **kwargs)  # type: ignore[arg-type]
        started.append(worker)
        worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.stop()


# Short leases and reconcile windows so that a killed attempt is taken over in seconds.
FAST = {"MAILRELAY_PROVIDER_TIMEOUT": "5", "MAILRELAY_LEASE_SECONDS": "20",
        "MAILRELAY_RECONCILE_AFTER": "10"}


@pytest.fixture
def fast_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """FAST in this process's settings too; pass it to the workers as their ``extra_env``."""
    from mailrelay.config import get_settings

    for name, value in FAST.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield FAST
    get_settings.cache_clear()


@dataclass
class EmulatorHandle:
    url: str
    bundle: str
    client: Any


@pytest.fixture(scope="session")
def emulator_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorHandle]:
    """One real emulator process (HTTPS) for the session; settings point mailrelay at it."""
    from mailrelay.config import get_settings
    from mailrelay.devstack import emulator_env
    from mailrelay.emulator.client import EmulatorClient

    state = tmp_path_factory.mktemp("emulator")
    log = (state / "emulator.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "mailrelay.cli", "emulator", "--port", "0",
                                "--state-dir", str(state)], stdout=subprocess.PIPE, stderr=log,
                               text=True, start_new_session=True)
    assert process.stdout is not None
    found: dict[str, str] = {}
    deadline = time.monotonic() + 30
    while not {"emulator", "bundle"} <= set(found) and time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        name, _, value = line.partition(": ")
        found[name.strip()] = value.strip()
    assert {"emulator", "bundle"} <= set(found), f"emulator did not start: {found}"
    url, bundle = found["emulator"], found["bundle"]
    os.environ.update(emulator_env(url, bundle))
    get_settings.cache_clear()
    yield EmulatorHandle(url, bundle, EmulatorClient(url, verify=bundle))
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(10)
    log.close()


@pytest.fixture
def emulator(emulator_process: EmulatorHandle) -> EmulatorHandle:
    emulator_process.client.reset()
    return emulator_process


@pytest.fixture
def gmail_account(emulator: EmulatorHandle, clean_db: None, clean_redis: None, secret_key: str) -> str:
    from mailrelay.auth import accounts
    from mailrelay.auth.credentials import forget

    address = "sender@example.com"
    emulator.client.register_client("mailrelay-client", "client-secret")
    refresh = emulator.client.grant("mailrelay-client", address)
    # Far above Gmail's 150/min: tests about other things must not wait for the bucket
    # (tests/integration/test_rate_limit.py checks the limiter itself).
    accounts.add("gmail", address, client_id="mailrelay-client", client_secret="client-secret",
                 refresh_token=refresh, rate_limit_per_minute=UNLIMITED)
    forget()
    return address


MS_TENANT = "contoso-tenant"
UNLIMITED = 100_000


@pytest.fixture
def ms_account(emulator: EmulatorHandle, clean_db: None, clean_redis: None, secret_key: str) -> str:
    """A delegated Microsoft 365 account (refresh token through MSAL)."""
    from mailrelay.auth import accounts
    from mailrelay.auth.credentials import forget

    address = "sender@contoso.example"
    emulator.client.ms_register_app("ms-client", "ms-secret", MS_TENANT)
    refresh = emulator.client.ms_grant("ms-client", address)
    accounts.add("microsoft", address, client_id="ms-client", tenant=MS_TENANT,
                 client_secret="ms-secret", refresh_token=refresh, rate_limit_per_minute=UNLIMITED)
    forget()
    return address
