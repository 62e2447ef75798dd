"""Consent (authorization code + PKCE) against the emulator, without a browser: the
emulator's ``auto=1`` switch approves, or the test posts the consent form itself."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests

from mailrelay import providers
from mailrelay.auth import accounts, consent
from mailrelay.delivery import deliver
from mailrelay.intake import take_in
from mailrelay.store import outbox
from tests.integration.conftest import MS_TENANT, EmulatorHandle
from tests.integration.helpers import query
from tests.processes import ROOT

GMAIL_CLIENT, GMAIL_SECRET = "consent-client", "consent-secret"
MS_CLIENT, MS_SECRET = "ms-consent-client", "ms-consent-secret"
REDIRECT = "http://127.0.0.1:9/"  # never called: the tests read the redirect themselves
ADA = "ada@example.com"
BOB = "bob@contoso.example"


@pytest.fixture
def apps(emulator: EmulatorHandle, clean_db: None, clean_redis: None) -> EmulatorHandle:
    emulator.client.register_client(GMAIL_CLIENT, GMAIL_SECRET)
    emulator.client.ms_register_app(MS_CLIENT, MS_SECRET, MS_TENANT)
    return emulator


def _flow(provider: str, address: str) -> consent.ConsentFlow:
    client, secret, tenant = ((GMAIL_CLIENT, GMAIL_SECRET, None) if provider == "gmail"
                              else (MS_CLIENT, MS_SECRET, MS_TENANT))
    return consent.begin(providers.adapter_class(provider)(), address, client_id=client,
                         client_secret=secret, tenant=tenant, redirect_uri=REDIRECT)


def _complete(flow: consent.ConsentFlow, response: dict[str, str], provider: str, address: str,
              enqueued: list[tuple[str, str]] | None = None) -> consent.Connected:
    client, secret, tenant = ((GMAIL_CLIENT, GMAIL_SECRET, None) if provider == "gmail"
                              else (MS_CLIENT, MS_SECRET, MS_TENANT))
    return consent.complete(flow, response, provider=provider, address=address, client_id=client,
                            client_secret=secret, tenant=tenant,
                            enqueue=None if enqueued is None else lambda *pair: enqueued.append(pair))


def _redirect(response: requests.Response) -> dict[str, str]:
    assert response.status_code in (302, 303), response.text[:500]
    location = response.headers["Location"]
    assert location.startswith(REDIRECT)
    return dict(parse_qsl(urlsplit(location).query))


def approve(emulator: EmulatorHandle, url: str) -> dict[str, str]:
    """What the browser brings back to the loopback address after an automatic Allow."""
    return _redirect(requests.get(url + "&auto=1", allow_redirects=False, verify=emulator.bundle,
                                  timeout=10))


def decide(emulator: EmulatorHandle, url: str, decision: str, email: str | None = None) -> dict[str, str]:
    """What a person does on the consent page: (change the account and) click a button."""
    page = requests.get(url, verify=emulator.bundle, timeout=10)
    assert page.status_code == 200 and 'id="allow"' in page.text
    form = re.search(r'<form[^>]*action="([^"]+)"', page.text)
    assert form is not None
    fields = dict(re.findall(r'<input[^>]*type="hidden"[^>]*name="([^"]+)"[^>]*value="([^"]*)"',
                             page.text))
    fields.update(decision=decision)
    if email is not None:
        fields["email"] = email
    else:
        prefilled = re.search(r'<input[^>]*id="email"[^>]*value="([^"]*)"', page.text)
        fields["email"] = prefilled.group(1) if prefilled else ""
    action = form.group(1).replace("&amp;", "&")
    target = action if action.startswith("http") else emulator.url + action
    return _redirect(requests.post(target, data=fields, allow_redirects=False,
                                   verify=emulator.bundle, timeout=10))


def _send(address: str) -> str:
    accepted = take_in({"from": address, "to": ["x@example.net"], "subject": "after consent",
                        "text": "hello"}, request_id=None, actor="test")
    assert accepted.result.state == "queued", accepted
    deliver(accepted.result.message_id, worker="test")
    return accepted.result.message_id


@pytest.mark.parametrize(("provider", "address"), [("gmail", ADA), ("microsoft", BOB)])
def test_consent_creates_an_account_that_sends(apps: EmulatorHandle, provider: str, address: str) -> None:
    flow = _flow(provider, address)
    query_params = dict(parse_qsl(urlsplit(flow.url).query))
    assert query_params["code_challenge_method"] == "S256" and query_params["code_challenge"]
    assert query_params["state"] == flow.state
    done = _complete(flow, approve(apps, flow.url), provider, address)
    assert (done.created, done.address) == (True, address)
    (row,) = accounts.list_all()
    assert (row["address"], row["provider"], row["state"]) == (address, provider, "active")
    message_id = _send(address)
    assert (outbox.status(message_id) or {})["state"] == "sent"
    assert len(apps.client.messages(mailbox="x@example.net")) == 1


def test_the_consent_page_asks_a_person(apps: EmulatorHandle) -> None:
    flow = _flow("gmail", ADA)
    done = _complete(flow, decide(apps, flow.url, "allow"), "gmail", ADA)
    assert done.created and "https://www.googleapis.com/auth/gmail.send" in done.scopes


@pytest.mark.parametrize(("provider", "address"), [("gmail", ADA), ("microsoft", BOB)])
def test_a_tampered_state_changes_nothing(apps: EmulatorHandle, provider: str, address: str) -> None:
    flow = _flow(provider, address)
    response = approve(apps, flow.url)
    response["state"] = response["state"][:-2] + "xx"
    with pytest.raises(consent.ConsentError) as err:
        _complete(flow, response, provider, address)
    assert err.value.kind == "state_mismatch" and "nothing was changed" in str(err.value)
    assert accounts.list_all() == []
    # The code itself was not spent: the refusal happened before any exchange.
    assert apps.client.stats()["requests"].get("google.token" if provider == "gmail" else "ms.token",
                                               0) == 0


@pytest.mark.parametrize(("provider", "address"), [("gmail", ADA), ("microsoft", BOB)])
def test_a_wrong_code_verifier_is_refused(apps: EmulatorHandle, provider: str, address: str) -> None:
    flow: Any = _flow(provider, address)
    response = approve(apps, flow.url)
    # An intercepted code redeemed by someone without the verifier.
    if provider == "gmail":
        flow.flow.code_verifier = "a" * 64
    else:
        flow.flow["code_verifier"] = "a" * 64
    with pytest.raises(consent.ConsentError) as err:
        _complete(flow, response, provider, address)
    assert err.value.kind == "invalid_grant"
    assert "code verifier does not match" in str(err.value) and "nothing was changed" in str(err.value)
    assert accounts.list_all() == []


def test_a_declined_consent(apps: EmulatorHandle) -> None:
    flow = _flow("gmail", ADA)
    with pytest.raises(consent.ConsentError) as err:
        _complete(flow, decide(apps, flow.url, "deny"), "gmail", ADA)
    assert err.value.kind == "access_denied" and "declined" in str(err.value)
    assert accounts.list_all() == []


@pytest.mark.parametrize(("provider", "address", "other"),
                         [("gmail", ADA, "mallory@example.com"), ("microsoft", BOB, "eve@contoso.example")])
def test_signing_in_as_another_mailbox_is_refused(apps: EmulatorHandle, provider: str, address: str,
                                                  other: str) -> None:
    flow = _flow(provider, address)
    with pytest.raises(consent.ConsentError) as err:
        _complete(flow, decide(apps, flow.url, "allow", email=other), provider, address)
    assert err.value.kind == "wrong_mailbox" and other in str(err.value)
    assert accounts.list_all() == []


def test_reconnect_resumes_parked_messages(apps: EmulatorHandle) -> None:
    flow = _flow("gmail", ADA)
    _complete(flow, approve(apps, flow.url), "gmail", ADA)
    apps.client.revoke(email=ADA)
    parked = [_send(ADA) for _ in range(3)]
    for message_id in parked:
        info = outbox.status(message_id) or {}
        assert (info["state"], info["error_code"]) == ("retrying", "auth_revoked")
        assert info["next_attempt_at"] is not None  # parked until the retry window closes
    assert accounts.credentials(ADA).state == "reauth_required"
    assert apps.client.messages(mailbox="x@example.net") == []

    flow = _flow("gmail", ADA)
    enqueued: list[tuple[str, str]] = []
    done = _complete(flow, approve(apps, flow.url), "gmail", ADA, enqueued)
    assert (done.created, done.resumed) == (False, 3)
    assert sorted(enqueued) == sorted((m, "gmail") for m in parked)
    assert accounts.credentials(ADA).state == "active"
    for message_id, _ in enqueued:
        deliver(message_id, worker="test")
        assert (outbox.status(message_id) or {})["state"] == "sent"
    assert len(apps.client.messages(mailbox="x@example.net")) == 3
    resumed = query("SELECT count(*) FROM audit WHERE action = 'resume'")
    assert resumed[0][0] == 3


@pytest.fixture
def cli_env(apps: EmulatorHandle) -> dict[str, str]:
    return {**os.environ, "MAILRELAY_CLIENT_SECRET": GMAIL_SECRET}


def _start_connect(env: dict[str, str], *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "mailrelay.cli", "auth", "connect", "gmail", ADA,
                             "--client-id", GMAIL_CLIENT, "--no-browser", "--json", *extra],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _consent_url(process: subprocess.Popen[str]) -> str:
    assert process.stderr is not None
    for line in process.stderr:
        if line.strip().startswith("https://"):
            return line.strip()
    raise AssertionError("no consent URL printed")


def test_auth_connect_receives_the_redirect_on_a_loopback_port(apps: EmulatorHandle,
                                                               cli_env: dict[str, str]) -> None:
    process = _start_connect(cli_env, "--timeout", "60")
    url = _consent_url(process)
    redirect_uri = dict(parse_qsl(urlsplit(url).query))["redirect_uri"]
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", redirect_uri)
    location = requests.get(url + "&auto=1", allow_redirects=False, verify=apps.bundle,
                            timeout=10).headers["Location"]
    page = requests.get(location, timeout=10)  # what the browser does next
    assert page.status_code == 200 and "You can close this window" in page.text
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    result = json.loads(out)
    assert (result["address"], result["state"], result["created"]) == (ADA, "active", True)
    assert "code=" not in err and "refresh" not in err.lower()  # nothing secret printed


def test_auth_connect_gives_up_after_its_timeout(apps: EmulatorHandle, cli_env: dict[str, str]) -> None:
    process = _start_connect(cli_env, "--timeout", "5")
    _, err = process.communicate(timeout=60)
    assert process.returncode == 1
    assert "consent refused (timeout)" in err and "nothing was changed" in err
    assert accounts.list_all() == []
