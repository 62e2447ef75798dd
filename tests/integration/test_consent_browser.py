"""Both consent flows as a person does them: `mailrelay auth connect` prints the URL,
headless Chromium (Debian's, driven through chromedriver) opens it and clicks Allow, the
command receives the redirect on its loopback port, and the account then sends through a
real worker."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest

from mailrelay.client import submit
from tests.integration.conftest import MS_TENANT, EmulatorHandle
from tests.integration.helpers import final
from tests.processes import ROOT, Worker

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs Debian's chromium and chromium-driver: apt-get install chromium chromium-driver")

CASES = {
    "gmail": ("ada@example.com", "browser-client", "browser-secret", None),
    "microsoft": ("bob@contoso.example", "ms-browser-client", "ms-browser-secret", MS_TENANT),
}


@pytest.fixture
def browser(tmp_path: Path, emulator: EmulatorHandle) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-background-networking", "--disable-sync",
                "--disable-component-update", f"--user-data-dir={tmp_path / 'chromium'}",
                # The emulator's CA is not in Chromium's store; TLS is tested elsewhere.
                "--ignore-certificate-errors"):
        options.add_argument(arg)
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(tmp_path / "driver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.mark.parametrize("provider", ["gmail", "microsoft"])
def test_connect_in_a_browser_then_send(provider: str, browser: object, emulator: EmulatorHandle,
                                        clean_db: None, clean_redis: None,
                                        start_worker: Callable[..., Worker]) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    address, client_id, secret, tenant = CASES[provider]
    if tenant is None:
        emulator.client.register_client(client_id, secret)
    else:
        emulator.client.ms_register_app(client_id, secret, tenant)
    argv = [sys.executable, "-m", "mailrelay.cli", "auth", "connect", provider, address,
            "--client-id", client_id, "--timeout", "90"]
    if tenant:
        argv += ["--tenant", tenant]
    env = {**os.environ, "MAILRELAY_CLIENT_SECRET": secret, "DISPLAY": ""}
    process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        url = next(line.strip() for line in process.stdout if line.strip().startswith("https://"))
        assert dict(parse_qsl(urlsplit(url).query))["code_challenge_method"] == "S256"

        driver = browser
        driver.get(url)  # type: ignore[attr-defined]
        page = driver.page_source  # type: ignore[attr-defined]
        assert address in page and "Allow" in page
        driver.find_element(By.ID, "allow").click()  # type: ignore[attr-defined]
        WebDriverWait(driver, 30).until(
            expected_conditions.text_to_be_present_in_element((By.TAG_NAME, "body"),
                                                              "You can close this window"))
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert f"{address}: connected ({provider})" in out

    start_worker(f"mailrelay.{provider}", concurrency=1)
    info = final(submit({"from": address, "to": ["reader@example.net"], "subject": "connected",
                         "text": "sent after a consent in a browser"}).message_id)
    assert info["state"] == "sent", info
    assert len(emulator.client.messages(mailbox="reader@example.net")) == 1
