from __future__ import annotations

import base64

import requests

from mailrelay.emulator import Emulator, EmulatorClient
from tests.unit.emulator.conftest import CLIENT_ID, CLIENT_SECRET, Account

EXPIRED_OR_REVOKED = {"error": "invalid_grant", "error_description": "Token has been expired or revoked."}


def test_refresh_token_grant(account: Account) -> None:
    response = account.token()
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"access_token", "expires_in", "token_type", "scope"}
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    assert body["access_token"] != account.access_token  # every exchange mints a new one
    assert response.headers["Cache-Control"] == "no-store"


def test_client_secret_in_basic_auth(emulator: Emulator, account: Account) -> None:
    basic = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    response = requests.post(
        f"{emulator.url}/token", verify=emulator.bundle_path, timeout=10,
        data={"grant_type": "refresh_token", "refresh_token": account.refresh_token},
        headers={"Authorization": f"Basic {basic}"})
    assert response.status_code == 200


def test_unknown_refresh_token_is_invalid_grant(account: Account) -> None:
    response = account.token(refresh_token="1//unknown")
    assert response.status_code == 400
    assert response.json() == EXPIRED_OR_REVOKED


def test_unknown_client_or_wrong_secret_is_invalid_client(account: Account) -> None:
    for overrides in ({"client_id": "nobody"}, {"client_secret": "wrong"}):
        response = account.token(**overrides)
        assert response.status_code == 401
        assert response.json()["error"] == "invalid_client"
        assert response.json()["error_description"]


def test_revoked_refresh_token(account: Account, control: EmulatorClient) -> None:
    assert control.revoke(refresh_token=account.refresh_token) == 1
    response = account.token()
    assert response.status_code == 400 and response.json() == EXPIRED_OR_REVOKED
    # Revoking a grant also kills the access tokens it minted, as at Google.
    assert account.get("profile").status_code == 401


def test_revoking_a_mailbox_revokes_every_grant(emulator: Emulator, account: Account,
                                               control: EmulatorClient) -> None:
    other = Account(emulator, account.email)
    bystander = Account(emulator, "bystander@example.com")
    assert control.revoke(email=account.email.upper()) == 2
    assert account.token().status_code == 400 and other.token().status_code == 400
    assert bystander.token().status_code == 200


def test_other_grant_types(account: Account) -> None:
    response = account.token(grant_type="password")
    assert response.status_code == 400 and response.json()["error"] == "unsupported_grant_type"
    response = account.token(grant_type="")
    assert response.status_code == 400 and response.json()["error"] == "unsupported_grant_type"


def test_token_lifetime_and_expiry(account: Account, control: EmulatorClient) -> None:
    control.set_token_ttl(120)
    assert account.token().json()["expires_in"] == 120
    assert account.get("profile").status_code == 200
    assert control.expire_tokens("someone-else@example.com") == 0
    assert control.expire_tokens(account.email) >= 1
    response = account.get("profile")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == (
        'Bearer realm="https://accounts.google.com/", error="invalid_token"')
    assert response.json()["error"]["status"] == "UNAUTHENTICATED"
    # The refresh token still works: the client recovers by refreshing.
    account.access_token = account.token().json()["access_token"]
    assert account.get("profile").status_code == 200


def test_zero_lifetime_tokens_are_born_expired(account: Account, control: EmulatorClient) -> None:
    control.set_token_ttl(0)
    account.access_token = account.token().json()["access_token"]
    assert account.get("profile").status_code == 401
