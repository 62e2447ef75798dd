"""Google's consent: google-auth-oauthlib's Flow (authorization code, PKCE S256, offline).

The signed-in mailbox is read from the Gmail profile endpoint with the new access token,
which the gmail.readonly scope (needed anyway for the "already sent?" lookup) allows.
"""

from __future__ import annotations

from collections.abc import Mapping

import requests
from google_auth_oauthlib.flow import Flow
from oauthlib.oauth2.rfc6749.errors import OAuth2Error

from mailrelay.auth.consent import ConsentError, Granted, require_scopes
from mailrelay.config import get_settings


class GoogleConsent:
    def __init__(self, *, client_id: str, client_secret: str, redirect_uri: str, login_hint: str,
                 scopes: tuple[str, ...]) -> None:
        settings = get_settings()
        self.scopes = scopes
        self.gmail_api_url = settings.gmail_api_url.rstrip("/")
        self.timeout = settings.provider_timeout
        config = {"installed": {"client_id": client_id, "client_secret": client_secret,
                                "auth_uri": settings.google_auth_url,
                                "token_uri": settings.google_token_url,
                                "redirect_uris": [redirect_uri]}}
        self.flow = Flow.from_client_config(config, scopes=list(scopes), redirect_uri=redirect_uri,
                                            autogenerate_code_verifier=True)
        # offline + consent: Google issues a refresh token only on a consent it shows.
        self.url, self.state = self.flow.authorization_url(
            access_type="offline", prompt="consent", login_hint=login_hint)

    def finish(self, response: Mapping[str, str]) -> Granted:
        code = response.get("code")
        if not code:
            raise ConsentError("invalid_request", "the answer carried no code; nothing was changed")
        try:
            # Google may grant fewer scopes than asked (a person can untick one); that is
            # checked below, in words, instead of oauthlib's scope-change exception.
            token = self.flow.fetch_token(code=code, timeout=self.timeout)
        except OAuth2Error as err:
            raise ConsentError(err.error or "invalid_grant", _refusal(err)) from None
        except Warning as err:  # oauthlib: "Scope has changed"
            raise ConsentError("missing_scope", f"Google granted other scopes than asked ({err}); "
                               "nothing was changed") from None
        except requests.RequestException as err:
            raise ConsentError("network_error", "Google's token endpoint could not be reached; "
                               "nothing was changed") from err
        refresh_token = token.get("refresh_token")
        if not refresh_token:
            raise ConsentError("no_refresh_token", "Google gave no refresh token (offline access "
                               "was not granted); nothing was changed")
        granted = tuple(_scopes(token.get("scope")) or self.scopes)
        require_scopes(granted, self.scopes, "Google")
        return Granted(str(refresh_token), self._profile_address(str(token["access_token"])),
                       granted)

    def _profile_address(self, access_token: str) -> str:
        try:
            response = requests.get(f"{self.gmail_api_url}/gmail/v1/users/me/profile",
                                    headers={"Authorization": f"Bearer {access_token}"},
                                    timeout=self.timeout)
            response.raise_for_status()
            return str(response.json()["emailAddress"])
        except (requests.RequestException, ValueError, KeyError) as err:
            raise ConsentError("profile_unavailable", "the Gmail profile (who signed in) could "
                               "not be read; nothing was changed") from err


def _scopes(value: object) -> list[str]:
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [str(v) for v in value]
    return []


def _refusal(err: OAuth2Error) -> str:
    description = (err.description or "").strip()
    if err.error == "invalid_grant" and "verifier" in description.lower():
        return ("Google refused the code: the code verifier does not match the consent "
                "request (PKCE); nothing was changed")
    return f"Google refused the code ({err.error}: {description[:120]}); nothing was changed"
