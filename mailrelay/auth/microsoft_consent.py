"""Microsoft's consent: MSAL's auth code flow (PKCE S256, state and nonce checked by MSAL).

The signed-in mailbox comes from the ID token's ``preferred_username``; MSAL checks the
token's audience and nonce. ``offline_access`` (and ``openid profile``) MSAL adds itself.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import msal
import requests

from mailrelay.auth.consent import ConsentError, Granted, require_scopes
from mailrelay.config import get_settings

GRAPH_PREFIX = "https://graph.microsoft.com/"


class MicrosoftConsent:
    def __init__(self, *, client_id: str, client_secret: str, tenant: str, redirect_uri: str,
                 login_hint: str, scopes: tuple[str, ...]) -> None:
        settings = get_settings()
        self.scopes = scopes
        try:
            # Building the app reads the tenant's OpenID configuration: a wrong tenant
            # shows here, before anyone is sent to a consent page.
            self.app = msal.ConfidentialClientApplication(
                client_id, client_credential=client_secret,
                authority=f"{settings.ms_authority_host.rstrip('/')}/{tenant}",
                instance_discovery=False, timeout=settings.provider_timeout,
                token_cache=msal.TokenCache())
        except ValueError as err:
            raise ConsentError("wrong_tenant", f"tenant {tenant!r} is unknown to Entra ID; "
                               "nothing was changed") from err
        except requests.RequestException as err:
            raise ConsentError("network_error", "Entra ID could not be reached") from err
        with warnings.catch_warnings():
            # MSAL recommends response_mode=form_post, which has the browser post the code
            # with a script; a native app's loopback redirect (RFC 8252) takes it in the
            # query, where PKCE already makes an intercepted code useless.
            warnings.filterwarnings("ignore", message="response_mode='form_post'",
                                    category=UserWarning)
            self.flow: dict[str, Any] = self.app.initiate_auth_code_flow(
                list(scopes), redirect_uri=redirect_uri, login_hint=login_hint, prompt="consent")
        self.url = str(self.flow["auth_uri"])
        self.state = str(self.flow["state"])

    def finish(self, response: Mapping[str, str]) -> Granted:
        try:
            result = self.app.acquire_token_by_auth_code_flow(self.flow, dict(response))
        except ValueError as err:  # MSAL's own state or nonce check
            raise ConsentError("state_mismatch", f"MSAL refused the answer ({str(err)[:80]}); "
                               "nothing was changed") from None
        except requests.RequestException as err:
            raise ConsentError("network_error", "Entra ID's token endpoint could not be reached; "
                               "nothing was changed") from err
        if "error" in result:
            raise ConsentError(str(result["error"]), _refusal(result))
        refresh_token = result.get("refresh_token")
        if not refresh_token:
            raise ConsentError("no_refresh_token", "Entra ID gave no refresh token "
                               "(offline_access was not granted); nothing was changed")
        granted = tuple(str(result.get("scope", "")).split())
        # Entra ID names Graph's scopes with or without the resource; compare by name.
        require_scopes(tuple(_name(s) for s in granted), tuple(_name(s) for s in self.scopes),
                       "Microsoft")
        claims = result.get("id_token_claims") or {}
        signed_in = claims.get("preferred_username") or claims.get("email") or ""
        return Granted(str(refresh_token), str(signed_in), granted)


def _name(scope: str) -> str:
    return scope.rpartition("/")[2] if scope.lower().startswith(GRAPH_PREFIX) else scope


def _refusal(result: Mapping[str, Any]) -> str:
    codes = result.get("error_codes") or []
    if 501481 in codes:
        return ("Entra ID refused the code: the code verifier does not match the consent "
                "request (PKCE); nothing was changed")
    description = str(result.get("error_description", "")).splitlines()[0][:160]
    return f"Entra ID refused the code ({result.get('error')}: {description}); nothing was changed"
