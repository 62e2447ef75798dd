"""EmulatorClient: the control API from Python, for tests and mailrelay's demo."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

DEFAULT_TIMEOUT = 30.0


class EmulatorError(RuntimeError):
    """The control API refused a call; the message is its explanation."""


class EmulatorClient:
    """``verify`` is the CA or bundle path that trusts the emulator. It is passed with
    every request because requests lets REQUESTS_CA_BUNDLE override a session's
    ``verify`` (and this machine sets that variable to the system bundle)."""

    def __init__(self, url: str, verify: str | Path | bool = True,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.url = url.rstrip("/")
        self.verify: str | bool = str(verify) if isinstance(verify, Path) else verify
        self.timeout = timeout

    def _call(self, method: str, path: str, json: Any = None,
              params: dict[str, str] | None = None) -> requests.Response:
        response = requests.request(method, f"{self.url}{path}", json=json, params=params,
                                    verify=self.verify, timeout=self.timeout)
        if response.status_code >= 400:
            try:
                detail = response.json().get("error", response.text)
            except ValueError:
                detail = response.text
            raise EmulatorError(f"{method} {path}: {response.status_code} {detail}")
        return response

    def _json(self, method: str, path: str, json: Any = None,
              params: dict[str, str] | None = None) -> Any:
        return self._call(method, path, json, params).json()

    def register_client(self, client_id: str, client_secret: str) -> None:
        self._json("POST", "/_emulator/clients", {"client_id": client_id, "client_secret": client_secret})

    def grant(self, client_id: str, email: str, scope: str | None = None) -> str:
        """A new refresh token for ``email`` through ``client_id``."""
        body = {"client_id": client_id, "email": email}
        if scope is not None:
            body["scope"] = scope
        return str(self._json("POST", "/_emulator/grants", body)["refresh_token"])

    def revoke(self, *, refresh_token: str | None = None, email: str | None = None) -> int:
        """Revoke one refresh token, or every grant of ``email`` (Google's and
        Microsoft's); how many were revoked."""
        body = {"refresh_token": refresh_token} if refresh_token is not None else {"email": email}
        return int(self._json("POST", "/_emulator/revoke", body)["revoked"])

    def expire_tokens(self, email: str | None = None) -> int:
        """Expire the access tokens of ``email``, or all of them; how many."""
        body = {} if email is None else {"email": email}
        return int(self._json("POST", "/_emulator/expire", body)["expired"])

    def set_token_ttl(self, seconds: int) -> None:
        self._json("POST", "/_emulator/settings", {"access_token_ttl": seconds})

    def ms_register_app(self, client_id: str, client_secret: str, tenant: str, *,
                        roles: list[str] | None = None, domains: list[str] | None = None) -> None:
        """Register an Entra app (confidential client) in ``tenant``. ``roles`` are its
        application permissions (default Mail.Send, Mail.ReadWrite, User.Read.All);
        ``domains``, when given, limit app-only calls to mailboxes in those domains."""
        body: dict[str, Any] = {"client_id": client_id, "client_secret": client_secret, "tenant": tenant}
        if roles is not None:
            body["roles"] = roles
        if domains is not None:
            body["domains"] = domains
        self._json("POST", "/_emulator/ms/apps", body)

    def ms_grant(self, client_id: str, email: str, scope: str | None = None) -> str:
        """A new delegated refresh token for ``email`` through the Entra app ``client_id``;
        ``scope`` (space-separated) limits what the user consented to."""
        body = {"client_id": client_id, "email": email}
        if scope is not None:
            body["scope"] = scope
        return str(self._json("POST", "/_emulator/ms/grants", body)["refresh_token"])

    def connect(self, provider: str, client_id: str, client_secret: str, email: str,
                tenant: str | None = None) -> str:
        """Register the OAuth client of ``provider`` ("gmail" or "microsoft") and return a
        new refresh token for ``email``: what a consent would give."""
        if provider == "microsoft":
            self.ms_register_app(client_id, client_secret, tenant or "common")
            return self.ms_grant(client_id, email)
        self.register_client(client_id, client_secret)
        return self.grant(client_id, email)

    def set_consent_user(self, email: str | None) -> None:
        """Who signs in on the consent pages when the authorize URL has no login_hint: the
        page's account field holds it, and ``auto=1`` consents as it. None clears it."""
        self._json("POST", "/_emulator/consent", {"email": email})

    def set_index_lag(self, seconds: float) -> None:
        """Sent messages show in Gmail's search and Graph's Sent Items ``seconds`` late."""
        self._json("POST", "/_emulator/settings", {"index_lag_seconds": seconds})

    def set_ms_strict_rotation(self, on: bool) -> None:
        """In strict rotation mode a Microsoft refresh token works once."""
        self._json("POST", "/_emulator/settings", {"ms_strict_rotation": on})

    def inject(self, **rule: Any) -> int:
        """Add a fault rule (see faults.FaultRule for the fields); its id."""
        return int(self._json("POST", "/_emulator/inject", rule)["id"])

    def faults(self) -> list[dict[str, Any]]:
        return list(self._json("GET", "/_emulator/faults")["rules"])

    def clear_faults(self) -> None:
        """Remove every fault rule; messages and counters stay."""
        self._json("DELETE", "/_emulator/faults")

    def reset(self, *, everything: bool = False) -> None:
        """Forget faults, counters and messages; ``everything`` also clients, grants,
        pending consents and authorization codes."""
        self._json("POST", "/_emulator/reset", {"all": everything})

    def stats(self) -> dict[str, Any]:
        return dict(self._json("GET", "/_emulator/stats"))

    def messages(self, mailbox: str | None = None) -> list[dict[str, Any]]:
        """Delivered messages, newest first, of one mailbox or all."""
        params = None if mailbox is None else {"mailbox": mailbox}
        return list(self._json("GET", "/_emulator/api/messages", params=params)["messages"])

    def raw(self, message_id: str) -> bytes:
        return self._call("GET", f"/_emulator/api/messages/{message_id}/raw").content

    def part(self, message_id: str, cid: str) -> bytes:
        return self._call("GET", f"/_emulator/api/messages/{message_id}/parts/{quote(cid, safe='')}").content
