"""Sign-in and consent: the authorization code flow with PKCE, at Google and at Entra,
through plain HTTP and through the libraries apps use (google-auth-oauthlib, MSAL)."""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import re
import secrets
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msal
import pytest
import requests
from google.auth.transport.requests import Request as GoogleAuthRequest
from google_auth_oauthlib.flow import Flow

from mailrelay.emulator import Emulator, EmulatorClient
from tests.unit.emulator.conftest import CLIENT_ID, CLIENT_SECRET, message
from tests.unit.emulator.test_microsoft import APP_ID, APP_SECRET, TENANT, Graph, refresh, simple_message

REDIRECT = "http://127.0.0.1:8765/callback"
ADA = "ada@contoso.com"
GMAIL_SEND = "https://www.googleapis.com/auth/gmail.send"
GMAIL_READONLY = "https://www.googleapis.com/auth/gmail.readonly"
GMAIL_METADATA = "https://www.googleapis.com/auth/gmail.metadata"
USERINFO_EMAIL = "https://www.googleapis.com/auth/userinfo.email"
GRAPH_SEND = "https://graph.microsoft.com/Mail.Send"
STATE = "a b&c=d/é"  # echoed verbatim, whatever it holds


# --- helpers -----------------------------------------------------------------------------


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    return verifier, challenge.decode()


def get(emulator: Emulator, path: str, **params: str) -> requests.Response:
    return requests.get(f"{emulator.url}{path}", params=params, allow_redirects=False,
                        verify=str(emulator.bundle_path), timeout=10)


def post(emulator: Emulator, path: str, data: dict[str, str]) -> requests.Response:
    return requests.post(f"{emulator.url}{path}", data=data, allow_redirects=False,
                         verify=str(emulator.bundle_path), timeout=10)


def redirected(response: requests.Response, to: str = REDIRECT) -> dict[str, str]:
    """The query of a 302 back to the app, checked to go where it should."""
    assert response.status_code == 302, response.text
    location = response.headers["Location"]
    assert location.startswith(to + "?"), location
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query, keep_blank_values=True).items()}


def request_id(page: requests.Response) -> str:
    found = re.search(r'name="request_id" value="([^"]+)"', page.text)
    assert found is not None, page.text
    return html.unescape(found.group(1))


def claims(jwt: str) -> dict[str, Any]:
    header, payload, signature = jwt.split(".")
    assert json.loads(base64.urlsafe_b64decode(header + "==")) == {"typ": "JWT", "alg": "none"}
    assert signature == ""
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=="))
    return decoded


def error_page(response: requests.Response) -> str:
    """The text of an error page a person sees instead of a redirect."""
    assert response.status_code == 400, response.text
    assert "Location" not in response.headers
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "form-action 'none'" in response.headers["Content-Security-Policy"]
    return html.unescape(response.text)


# --- Google ------------------------------------------------------------------------------


def google_params(challenge: str, scope: str = f"openid {USERINFO_EMAIL} {GMAIL_SEND}",
                  **overrides: str) -> dict[str, str]:
    params = {"client_id": CLIENT_ID, "redirect_uri": REDIRECT, "response_type": "code",
              "scope": scope, "state": STATE, "code_challenge": challenge,
              "code_challenge_method": "S256", "access_type": "offline", "prompt": "consent",
              "login_hint": "sender@example.com", **overrides}
    return {k: v for k, v in params.items() if v}


def google_code(emulator: Emulator, challenge: str, **overrides: str) -> str:
    """A code through auto-approval."""
    page = get(emulator, "/o/oauth2/v2/auth", auto="1", **google_params(challenge, **overrides))
    return redirected(page)["code"]


def google_exchange(emulator: Emulator, code: str, verifier: str | None,
                    **overrides: str) -> requests.Response:
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
            "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, **overrides}
    if verifier is not None:
        form["code_verifier"] = verifier
    return post(emulator, "/token", form)


def gmail(emulator: Emulator, access_token: str, method: str, path: str, **kwargs: Any) -> requests.Response:
    return requests.request(method, f"{emulator.url}/gmail/v1/users/me/{path}",
                            headers={"Authorization": f"Bearer {access_token}"},
                            verify=str(emulator.bundle_path), timeout=10, **kwargs)


def gmail_send(emulator: Emulator, access_token: str, raw: bytes) -> requests.Response:
    return gmail(emulator, access_token, "POST", "messages/send",
                 json={"raw": base64.urlsafe_b64encode(raw).decode()})


def test_google_consent_page_allow_exchange_refresh_and_send(emulator: Emulator,
                                                             control: EmulatorClient) -> None:
    verifier, challenge = pkce()
    page = get(emulator, "/o/oauth2/v2/auth", **google_params(challenge), include_granted_scopes="true")
    assert page.status_code == 200 and page.headers["Content-Type"] == "text/html; charset=utf-8"
    csp = page.headers["Content-Security-Policy"]
    assert "script-src" not in csp and "default-src 'none'" in csp
    assert "form-action 'self' http://127.0.0.1:8765" in csp  # the redirect after the post goes there
    assert page.headers["X-Frame-Options"] == "DENY"
    text = page.text
    assert '<button type="submit" id="allow" name="decision" value="allow">Allow</button>' in text
    assert 'id="deny" name="decision" value="deny"' in text
    assert 'action="/o/oauth2/v2/auth/decision"' in text
    assert re.search(r'<input type="email" name="email" id="email" value="sender@example.com"', text)
    assert CLIENT_ID in text and "Send email as you" in text and GMAIL_SEND in text
    assert "See your Google account&#x27;s email address" in text
    assert challenge not in text and "8765/callback" in text  # the challenge stays server-side

    answer = post(emulator, "/o/oauth2/v2/auth/decision",
                  {"request_id": request_id(page), "decision": "allow", "email": "Grace@Example.com"})
    query = redirected(answer)
    assert query["state"] == STATE
    assert query["scope"] == f"openid {USERINFO_EMAIL} {GMAIL_SEND}"
    assert query["code"].startswith("4/0A")

    response = google_exchange(emulator, query["code"], verifier)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"access_token", "expires_in", "refresh_token", "scope", "token_type", "id_token"}
    assert body["token_type"] == "Bearer" and body["scope"] == query["scope"]
    id_token = claims(body["id_token"])
    assert id_token["iss"] == "https://accounts.google.com" and id_token["aud"] == CLIENT_ID
    assert id_token["email"] == "grace@example.com" and id_token["email_verified"] is True
    assert id_token["exp"] > id_token["iat"] and re.fullmatch(r"1\d{20}", id_token["sub"])

    refreshed = post(emulator, "/token", {"grant_type": "refresh_token", "client_id": CLIENT_ID,
                                          "client_secret": CLIENT_SECRET,
                                          "refresh_token": body["refresh_token"]})
    assert refreshed.status_code == 200 and refreshed.json()["scope"] == body["scope"]
    sent = gmail_send(emulator, refreshed.json()["access_token"], message(**{"from": "grace@example.com"}))
    assert sent.status_code == 200, sent.text
    assert control.messages("ada@example.org")[0]["mailbox"] == "ada@example.org"

    # gmail.send is no licence to search or to read the profile.
    for path, params in (("messages", {"q": "rfc822msgid:<x@y>"}), ("profile", {})):
        refused = gmail(emulator, body["access_token"], "GET", path, params=params)
        assert refused.status_code == 403
        error = refused.json()["error"]
        assert error["message"] == "Request had insufficient authentication scopes."
        assert error["errors"][0]["reason"] == "insufficientPermissions"
        assert error["status"] == "PERMISSION_DENIED"
        assert 'error="insufficient_scope"' in refused.headers["WWW-Authenticate"]

    # The same person signs in again: a stable subject.
    again = google_exchange(emulator, google_code(emulator, pkce()[1]), None)
    assert again.json()["error_description"] == "Missing code verifier."
    other_verifier, other_challenge = pkce()
    second = google_exchange(emulator, google_code(emulator, other_challenge, login_hint="grace@example.com"),
                             other_verifier)
    assert claims(second.json()["id_token"])["sub"] == id_token["sub"]


def test_google_code_checks(emulator: Emulator, control: EmulatorClient) -> None:
    verifier, challenge = pkce()
    code = google_code(emulator, challenge)
    wrong = google_exchange(emulator, code, pkce()[0])
    assert wrong.status_code == 400
    assert wrong.json() == {"error": "invalid_grant", "error_description": "Invalid code verifier."}
    # One attempt uses a code up, passed or failed.
    reused = google_exchange(emulator, code, verifier)
    assert reused.status_code == 400
    assert reused.json() == {"error": "invalid_grant", "error_description": "Malformed auth code."}

    code = google_code(emulator, challenge)
    assert google_exchange(emulator, code, verifier).status_code == 200
    assert google_exchange(emulator, code, verifier).json()["error"] == "invalid_grant"

    code = google_code(emulator, challenge)
    moved = google_exchange(emulator, code, verifier, redirect_uri="http://127.0.0.1:8765/other")
    assert moved.status_code == 400 and moved.json()["error"] == "invalid_grant"

    control.register_client("other-client", "other-secret")
    code = google_code(emulator, challenge)
    # A wrong secret is turned down before the code is looked at: the code survives it.
    assert google_exchange(emulator, code, verifier, client_secret="nope").status_code == 401
    stranger = google_exchange(emulator, code, verifier, client_id="other-client",
                               client_secret="other-secret")
    assert stranger.status_code == 400 and stranger.json()["error"] == "invalid_grant"
    assert google_exchange(emulator, "4/0Anonsense", verifier).json()["error"] == "invalid_grant"
    missing = google_exchange(emulator, "", verifier)
    assert missing.json()["error"] == "invalid_request"

    basic = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    code = google_code(emulator, challenge, access_type="", scope=GMAIL_SEND)
    response = requests.post(f"{emulator.url}/token", headers={"Authorization": f"Basic {basic}"},
                             data={"grant_type": "authorization_code", "code": code,
                                   "redirect_uri": REDIRECT, "code_verifier": verifier},
                             verify=str(emulator.bundle_path), timeout=10)
    assert response.status_code == 200
    # Online access, no openid: no refresh token and no id token.
    assert set(response.json()) == {"access_token", "expires_in", "scope", "token_type"}


def test_google_deny_and_refusals(emulator: Emulator, control: EmulatorClient) -> None:
    _, challenge = pkce()
    page = get(emulator, "/o/oauth2/v2/auth", **google_params(challenge))
    denied = post(emulator, "/o/oauth2/v2/auth/decision",
                  {"request_id": request_id(page), "decision": "deny"})
    assert redirected(denied) == {"error": "access_denied", "state": STATE}
    # A page is answered once.
    again = post(emulator, "/o/oauth2/v2/auth/decision",
                 {"request_id": request_id(page), "decision": "allow", "email": "a@example.com"})
    assert "This sign-in request is over" in error_page(again)

    assert "invalid_client" in error_page(get(emulator, "/o/oauth2/v2/auth",
                                                **google_params(challenge, client_id="nobody")))
    for uri in ("https://app.example.com/cb", "http://127.0.0.1.example.com/cb", "http://me@127.0.0.1:1/",
                "http://10.0.0.1:8765/", "http://localhost:8765/#frag", "http://127.0.0.1:99999/", ""):
        page = get(emulator, "/o/oauth2/v2/auth", **google_params(challenge, redirect_uri=uri))
        assert "redirect_uri_mismatch" in error_page(page), uri
    for uri in ("http://localhost/cb", "http://[::1]:8765/", "http://127.0.0.1:1/cb?x=1"):
        page = get(emulator, "/o/oauth2/v2/auth", auto="1", **google_params(challenge, redirect_uri=uri))
        assert redirected(page, uri.split("?")[0])["code"]
    ipv6 = get(emulator, "/o/oauth2/v2/auth", **google_params(challenge, redirect_uri="http://[::1]:8765/"))
    assert ipv6.headers["Content-Security-Policy"].endswith("form-action 'self' http:")

    for overrides, description in (({"code_challenge": ""}, "code_challenge"),
                                   ({"code_challenge_method": "plain"}, "S256"),
                                   ({"code_challenge": "short"}, "code_challenge"),
                                   ({"response_type": "token"}, "response_type"),
                                   ({"scope": ""}, "scope")):
        query = redirected(get(emulator, "/o/oauth2/v2/auth", **google_params(challenge, **overrides)))
        assert query["error"] in ("invalid_request", "unsupported_response_type")
        assert description in query["error_description"] and query["state"] == STATE

    page = get(emulator, "/o/oauth2/v2/auth", **google_params(challenge))
    no_email = post(emulator, "/o/oauth2/v2/auth/decision",
                    {"request_id": request_id(page), "decision": "allow", "email": ""})
    assert "No account" in error_page(no_email)
    # The page waits on: the person goes back and fills the field in.
    retried = post(emulator, "/o/oauth2/v2/auth/decision",
                   {"request_id": request_id(page), "decision": "allow", "email": "a@example.com"})
    assert redirected(retried)["code"]
    # A made-up request id opens nothing.
    assert error_page(post(emulator, "/o/oauth2/v2/auth/decision", {"request_id": "made-up",
                                                                     "decision": "deny"}))


def test_auto_approval_and_the_consent_user(emulator: Emulator, control: EmulatorClient) -> None:
    verifier, challenge = pkce()
    nobody = get(emulator, "/o/oauth2/v2/auth", auto="1", **google_params(challenge, login_hint=""))
    assert "auto=1 needs a login_hint" in error_page(nobody)
    control.set_consent_user("Carol@Example.com")
    page = get(emulator, "/o/oauth2/v2/auth", **google_params(challenge, login_hint=""))
    assert 'id="email" value="carol@example.com"' in page.text
    code = google_code(emulator, challenge, login_hint="")
    token = google_exchange(emulator, code, verifier).json()
    assert claims(token["id_token"])["email"] == "carol@example.com"
    # A login_hint wins over the control API's user.
    code = google_code(emulator, challenge, login_hint="dave@example.com")
    assert claims(google_exchange(emulator, code, verifier).json()["id_token"])["email"] == "dave@example.com"
    control.set_consent_user(None)
    assert get(emulator, "/o/oauth2/v2/auth", auto="1",
               **google_params(challenge, login_hint="")).status_code == 400
    assert requests.post(f"{emulator.url}/_emulator/consent", json={"email": "not an address"},
                         verify=str(emulator.bundle_path), timeout=10).status_code == 400


def test_gmail_scopes(emulator: Emulator, control: EmulatorClient) -> None:
    def access(scope: str) -> str:
        refresh_token = control.grant(CLIENT_ID, "sender@example.com", scope)
        return str(post(emulator, "/token", {"grant_type": "refresh_token", "client_id": CLIENT_ID,
                                             "client_secret": CLIENT_SECRET,
                                             "refresh_token": refresh_token}).json()["access_token"])

    search = {"q": "rfc822msgid:<x@example.com>"}
    metadata = access(GMAIL_METADATA)
    assert gmail(emulator, metadata, "GET", "messages").status_code == 200
    assert gmail(emulator, metadata, "GET", "profile").status_code == 200
    refused = gmail(emulator, metadata, "GET", "messages", params=search)
    assert refused.status_code == 403
    assert refused.json()["error"]["message"] == "Metadata scope does not support 'q' parameter"
    assert gmail_send(emulator, metadata, message()).status_code == 403

    readonly = access(GMAIL_READONLY)
    assert gmail(emulator, readonly, "GET", "messages", params=search).status_code == 200
    assert gmail_send(emulator, readonly, message()).status_code == 403
    upload = requests.post(f"{emulator.url}/upload/gmail/v1/users/me/messages/send",
                           params={"uploadType": "media"}, data=message(), timeout=10,
                           headers={"Authorization": f"Bearer {readonly}", "Content-Type": "message/rfc822"},
                           verify=str(emulator.bundle_path))
    assert upload.status_code == 403

    both = access(f"{GMAIL_SEND} {GMAIL_READONLY}")
    assert gmail_send(emulator, both, message()).status_code == 200
    assert gmail(emulator, both, "GET", "messages", params=search).status_code == 200
    for scope in ("https://www.googleapis.com/auth/gmail.compose", "https://www.googleapis.com/auth/gmail.modify",
                  "https://mail.google.com/"):
        assert gmail_send(emulator, access(scope), message()).status_code == 200, scope


def test_google_auth_oauthlib_flow(emulator: Emulator, control: EmulatorClient,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(emulator.bundle_path))
    config = {"installed": {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                            "auth_uri": f"{emulator.url}/o/oauth2/v2/auth",
                            "token_uri": f"{emulator.url}/token", "redirect_uris": ["http://127.0.0.1"]}}
    flow = Flow.from_client_config(config, scopes=["openid", USERINFO_EMAIL, GMAIL_SEND],
                                   autogenerate_code_verifier=True)
    flow.redirect_uri = "http://127.0.0.1:8765/"
    url, state = flow.authorization_url(access_type="offline", prompt="consent",
                                        login_hint="sender@example.com")
    query = redirected(requests.get(url + "&auto=1", allow_redirects=False, timeout=10),
                       "http://127.0.0.1:8765/")
    assert query["state"] == state
    flow.fetch_token(code=query["code"])
    credentials = flow.credentials
    assert credentials.refresh_token and credentials.token
    assert claims(credentials.id_token)["email"] == "sender@example.com"
    first = credentials.token
    credentials.refresh(GoogleAuthRequest())
    assert credentials.token != first
    assert gmail_send(emulator, credentials.token, message()).status_code == 200


def test_reset_forgets_pages_and_codes(emulator: Emulator, control: EmulatorClient) -> None:
    verifier, challenge = pkce()
    page = get(emulator, "/o/oauth2/v2/auth", **google_params(challenge))
    code = google_code(emulator, challenge)
    control.set_consent_user("carol@example.com")
    control.reset(everything=True)
    control.register_client(CLIENT_ID, CLIENT_SECRET)
    answer = post(emulator, "/o/oauth2/v2/auth/decision",
                  {"request_id": request_id(page), "decision": "allow", "email": "a@example.com"})
    assert "This sign-in request is over" in error_page(answer)
    assert google_exchange(emulator, code, verifier).json()["error_description"] == "Malformed auth code."
    assert get(emulator, "/o/oauth2/v2/auth", auto="1",
               **google_params(challenge, login_hint="")).status_code == 400


# --- Microsoft ---------------------------------------------------------------------------


@pytest.fixture
def ms(emulator: Emulator) -> EmulatorClient:
    client = EmulatorClient(emulator.url, verify=emulator.bundle_path)
    client.ms_register_app(APP_ID, APP_SECRET, TENANT)
    return client


AUTHORIZE = f"/{TENANT}/oauth2/v2.0/authorize"


def ms_params(challenge: str, scope: str = f"{GRAPH_SEND} offline_access openid profile",
              **overrides: str) -> dict[str, str]:
    params = {"client_id": APP_ID, "response_type": "code", "redirect_uri": REDIRECT, "scope": scope,
              "state": STATE, "nonce": "n-0S6_WzA2Mj", "code_challenge": challenge,
              "code_challenge_method": "S256", "client_info": "1", "login_hint": ADA, **overrides}
    return {k: v for k, v in params.items() if v}


def ms_code(emulator: Emulator, challenge: str, **overrides: str) -> str:
    return redirected(get(emulator, AUTHORIZE, auto="1", **ms_params(challenge, **overrides)))["code"]


def ms_exchange(emulator: Emulator, code: str, verifier: str, **overrides: str) -> requests.Response:
    form = {"grant_type": "authorization_code", "client_id": APP_ID, "client_secret": APP_SECRET,
            "code": code, "redirect_uri": REDIRECT, "code_verifier": verifier, "client_info": "1",
            "scope": f"{GRAPH_SEND} offline_access openid profile", **overrides}
    return post(emulator, f"/{TENANT}/oauth2/v2.0/token", form)


def aad(response: requests.Response, code: int) -> str:
    assert response.status_code == 400, response.text
    assert response.json()["error_codes"] == [code]
    return str(response.json()["error_description"])


def test_ms_consent_page_allow_exchange_refresh_and_send(emulator: Emulator, ms: EmulatorClient) -> None:
    verifier, challenge = pkce()
    page = get(emulator, AUTHORIZE, **ms_params(challenge), prompt="select_account")
    assert page.status_code == 200
    assert "form-action 'self' http://127.0.0.1:8765" in page.headers["Content-Security-Policy"]
    text = page.text
    assert 'id="allow" name="decision" value="allow"' in text and 'id="deny"' in text
    assert f'action="/{TENANT}/oauth2/v2.0/authorize/decision"' in text
    assert "Send mail as you" in text and GRAPH_SEND in text and "offline_access" in text
    assert f'id="email" value="{ADA}"' in text and APP_ID in text

    answer = post(emulator, f"/{TENANT}/oauth2/v2.0/authorize/decision",
                  {"request_id": request_id(page), "decision": "allow", "email": ADA})
    query = redirected(answer)
    assert set(query) == {"code", "client_info", "state", "session_state"}
    assert query["state"] == STATE
    client_info = json.loads(base64.urlsafe_b64decode(query["client_info"] + "=="))
    assert set(client_info) == {"uid", "utid"}

    response = ms_exchange(emulator, query["code"], verifier)
    assert response.status_code == 200, response.text
    body = response.json()
    assert {"access_token", "refresh_token", "id_token", "client_info", "scope"} <= set(body)
    assert body["scope"].split() == [GRAPH_SEND, "offline_access", "openid", "profile"]
    id_token = claims(body["id_token"])
    assert id_token["nonce"] == "n-0S6_WzA2Mj" and id_token["preferred_username"] == ADA
    assert id_token["aud"] == APP_ID and id_token["oid"] == client_info["uid"]

    graph = Graph(emulator, body["access_token"])
    assert graph.send(simple_message()).status_code == 202
    # Only what was consented: reading mail is not.
    assert graph.call("GET", "/me/messages").status_code == 403
    refreshed = refresh(emulator, body["refresh_token"], GRAPH_SEND)
    assert refreshed.status_code == 200, refreshed.text
    assert Graph(emulator, refreshed.json()["access_token"]).send(simple_message()).status_code == 202
    more = refresh(emulator, refreshed.json()["refresh_token"], "https://graph.microsoft.com/Mail.Read")
    assert aad(more, 65001)


def test_ms_code_checks(emulator: Emulator, ms: EmulatorClient) -> None:
    verifier, challenge = pkce()
    code = ms_code(emulator, challenge)
    wrong = ms_exchange(emulator, code, pkce()[0])
    assert wrong.json()["error"] == "invalid_grant"
    assert aad(wrong, 501481).startswith("AADSTS501481: The Code_Verifier does not match the "
                                         "code_challenge supplied in the authorization request.")
    reused = ms_exchange(emulator, code, verifier)
    assert "OAuth2 Authorization code was already redeemed" in aad(reused, 54005)

    code = ms_code(emulator, challenge)
    assert ms_exchange(emulator, code, verifier).status_code == 200
    assert aad(ms_exchange(emulator, code, verifier), 54005)

    code = ms_code(emulator, challenge)
    assert aad(ms_exchange(emulator, code, verifier, redirect_uri="http://127.0.0.1:1/"), 500112)
    assert aad(ms_exchange(emulator, ms_code(emulator, challenge), verifier, code_verifier=""), 501481)
    assert aad(ms_exchange(emulator, "1.AXoAnonsense", verifier), 9002313)

    # Without offline_access there is no refresh token; without openid no id token.
    code = ms_code(emulator, challenge, scope=GRAPH_SEND, client_info="")
    body = ms_exchange(emulator, code, verifier, client_info="").json()
    assert "refresh_token" not in body and "id_token" not in body and "client_info" not in body
    assert body["scope"] == GRAPH_SEND
    # .default stands for what the app is set up to use.
    code = ms_code(emulator, challenge, scope="https://graph.microsoft.com/.default openid")
    body = ms_exchange(emulator, code, verifier).json()
    assert "https://graph.microsoft.com/Mail.ReadWrite" in body["scope"].split()


def test_ms_deny_and_refusals(emulator: Emulator, ms: EmulatorClient) -> None:
    _, challenge = pkce()
    page = get(emulator, AUTHORIZE, **ms_params(challenge))
    denied = post(emulator, f"/{TENANT}/oauth2/v2.0/authorize/decision",
                  {"request_id": request_id(page), "decision": "deny"})
    query = redirected(denied)
    assert query["error"] == "access_denied" and query["state"] == STATE
    assert query["error_description"].startswith("AADSTS65004")

    assert "AADSTS90002" in error_page(get(emulator, "/fabrikam.onmicrosoft.com/oauth2/v2.0/authorize",
                                            **ms_params(challenge)))
    ms.ms_register_app("elsewhere", "s", "fabrikam.onmicrosoft.com")
    for client_id in ("nope", "elsewhere"):  # unknown, and registered in another tenant
        page = get(emulator, AUTHORIZE, **ms_params(challenge, client_id=client_id))
        assert "AADSTS700016" in error_page(page)
    bad_redirect = get(emulator, AUTHORIZE, **ms_params(challenge, redirect_uri="https://app.example.com/"))
    assert "AADSTS50011" in error_page(bad_redirect)
    form_post = get(emulator, AUTHORIZE, **ms_params(challenge, response_mode="form_post"))
    assert "response_mode=query only" in error_page(form_post)
    query_mode = get(emulator, AUTHORIZE, auto="1", **ms_params(challenge, response_mode="query"))
    assert redirected(query_mode)["code"]

    for overrides, code in (({"code_challenge": ""}, 900144), ({"code_challenge_method": "plain"}, 50149),
                            ({"code_challenge": "x" * 44}, 501491),
                            ({"scope": "api://other/Read openid"}, 70011)):
        query = redirected(get(emulator, AUTHORIZE, **ms_params(challenge, **overrides)))
        assert query["error_description"].startswith(f"AADSTS{code}:") and query["state"] == STATE
    # A Microsoft request id is nothing to Google's decision route.
    page = get(emulator, AUTHORIZE, **ms_params(challenge))
    stray = post(emulator, "/o/oauth2/v2/auth/decision", {"request_id": request_id(page), "decision": "deny"})
    assert "This sign-in request is over" in error_page(stray)


def test_msal_auth_code_flow(emulator: Emulator, ms: EmulatorClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(emulator.bundle_path))
    app = msal.ConfidentialClientApplication(APP_ID, client_credential=APP_SECRET,
                                             authority=f"{emulator.url}/{TENANT}", instance_discovery=False)
    # MSAL warns about every response_mode but form_post; the emulator answers in the query.
    with pytest.warns(UserWarning, match="form_post"):
        flow = app.initiate_auth_code_flow([GRAPH_SEND], redirect_uri="http://127.0.0.1:8765/",
                                           login_hint=ADA)
    response = requests.get(flow["auth_uri"] + "&auto=1", allow_redirects=False, timeout=10)
    query = redirected(response, "http://127.0.0.1:8765/")
    result = app.acquire_token_by_auth_code_flow(flow, query)
    assert "error" not in result, result
    assert result["access_token"] and result["refresh_token"]
    assert result["id_token_claims"]["preferred_username"] == ADA  # MSAL checked the nonce too
    [account] = app.get_accounts()
    assert account["username"] == ADA
    assert Graph(emulator, result["access_token"]).send(simple_message()).status_code == 202
    silent = app.acquire_token_silent([GRAPH_SEND], account=account, force_refresh=True)
    assert silent is not None and "access_token" in silent, silent


def test_consent_endpoints_are_counted_and_logged_without_secrets(
        emulator: Emulator, control: EmulatorClient, ms: EmulatorClient, emulator_log: io.StringIO) -> None:
    verifier, challenge = pkce()
    page = get(emulator, "/o/oauth2/v2/auth", **google_params(challenge))
    answer = post(emulator, "/o/oauth2/v2/auth/decision",
                  {"request_id": request_id(page), "decision": "allow", "email": "a@example.com"})
    code = redirected(answer)["code"]
    tokens = google_exchange(emulator, code, verifier).json()
    ms_page = get(emulator, AUTHORIZE, **ms_params(challenge))
    post(emulator, f"/{TENANT}/oauth2/v2.0/authorize/decision", {"request_id": request_id(ms_page),
                                                                 "decision": "deny"})
    ms_code(emulator, challenge)
    counted = control.stats()["requests"]
    assert counted["google.authorize"] == 1 and counted["google.consent"] == 1
    assert counted["ms.authorize"] == 2 and counted["ms.consent"] == 1
    log = emulator_log.getvalue()
    assert "GET /o/oauth2/v2/auth?client_id&redirect_uri" in log and " 200 google.authorize" in log
    for secret in (code, verifier, challenge, tokens["access_token"], tokens["refresh_token"],
                   request_id(page), "sender@example.com", "8765"):
        assert secret not in log
