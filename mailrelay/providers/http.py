"""The HTTP layer every HTTPS provider shares: one session per process, timeouts, and the
translation of transport failures into codes that say whether the request may have left.

A provider module fills in ``error_for(response)`` (its error table). A 401 is handled
here for all of them: the access token is renewed once and the request repeated once.
"""

from __future__ import annotations

import email.utils
import time
from typing import Any

import requests
import urllib3

from mailrelay.config import get_settings
from mailrelay.errors import ProviderError
from mailrelay.providers.base import Outbound, ProviderAdapter, TokenSource, before_request

CONNECT_TIMEOUT = 10.0


class AuthRejected(Exception):
    """The provider answered 401 to this access token."""


class HttpAdapter(ProviderAdapter):
    uses_oauth = True
    account_secrets = ("client_secret", "refresh_token")

    def __init__(self) -> None:
        # One session per adapter instance, and the registry keeps one instance per
        # process: TLS connections are reused across sends, never shared across a fork.
        self.session = requests.Session()
        self.session.headers["User-Agent"] = "mailrelay"
        self.timeout = (CONNECT_TIMEOUT, get_settings().provider_timeout)

    def transmit(self, out: Outbound, prepared: Any, tokens: TokenSource | None) -> Any:
        return self.with_token(tokens, lambda token: self.transmit_with(out, prepared, token))

    def with_token(self, tokens: TokenSource | None, request: Any) -> Any:
        """Run ``request(token)``; after a 401, renew the token once and run it once more."""
        if tokens is None:
            raise TypeError(f"{type(self).__name__} needs a TokenSource")
        token = tokens.get()
        try:
            return request(token)
        except AuthRejected:
            token = tokens.renew(token)
        try:
            return request(token)
        except AuthRejected:
            raise ProviderError("auth_expired", "a freshly refreshed access token was refused",
                                provider=self.name, status=401) from None

    def transmit_with(self, out: Outbound, prepared: Any, token: str) -> Any:
        """Send ``prepared`` with ``token``; raise AuthRejected on 401."""
        raise self._missing("transmit_with")

    def call(self, method: str, url: str, *, token: str, sends: bool, **kwargs: Any) -> requests.Response:
        """One request. ``sends``: whether a lost answer may mean the message went out."""
        headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
        response = self.request(method, url, sends=sends, headers=headers, **kwargs)
        if response.status_code == 401:
            raise AuthRejected()
        if response.status_code >= 400:
            failure = self.error_for(response)
            # A 5xx can come from a front end after the provider took the message.
            failure.sent_unknown = sends and response.status_code >= 500
            raise failure
        return response

    def request(self, method: str, url: str, *, sends: bool, **kwargs: Any) -> requests.Response:
        """One request, bounded as a whole: asked of the send's guard first (the lease),
        then given at most the provider timeout from its first byte to its last. Socket
        timeouts alone bound each read, so an answer trickling in would not end; here
        every read gets only what is left, and the body is read against the deadline."""
        before_request(sends=sends)
        deadline = time.monotonic() + self.timeout[0] + self.timeout[1]
        try:
            response = self.session.request(method, url, timeout=self.timeout, stream=True,
                                            **kwargs)
            _read_body(response, deadline)
        except requests.exceptions.ConnectTimeout as err:
            raise ProviderError("network_error", "connect timed out", provider=self.name) from err
        except requests.exceptions.SSLError as err:
            raise ProviderError("network_error", "TLS handshake failed", provider=self.name) from err
        except requests.exceptions.ReadTimeout as err:
            raise ProviderError("provider_timeout", "no answer in time", provider=self.name,
                                sent_unknown=sends) from err
        except requests.exceptions.ConnectionError as err:
            reached = _reached_server(err)
            raise ProviderError("network_error", "connection failed" + (" after the request"
                                if reached else ""), provider=self.name,
                                sent_unknown=sends and reached) from err
        except _PastDeadline as err:
            raise ProviderError("provider_timeout", "the answer did not end in time",
                                provider=self.name, sent_unknown=sends) from err
        return response

    def error_for(self, response: requests.Response) -> ProviderError:
        """The provider's error table: a response of status ≥ 400 (not 401) as a ProviderError."""
        raise self._missing("error_for")


class _PastDeadline(Exception):
    """A response still arriving when its request's time was up."""


def _read_body(response: requests.Response, deadline: float) -> None:
    """Read the whole body now, each read bounded by the time left before ``deadline``."""
    chunks = []
    try:
        for chunk in response.iter_content(64 * 1024):
            chunks.append(chunk)
            left = deadline - time.monotonic()
            if left <= 0:
                raise _PastDeadline()
            _shorten_reads(response, left)
    except requests.exceptions.ConnectionError as err:  # a read timed out mid-body
        response.close()
        raise _PastDeadline() from err
    except _PastDeadline:
        response.close()
        raise
    # What ``Response.content`` would have stored; callers read .json()/.text as usual.
    response._content = b"".join(chunks)


def _shorten_reads(response: requests.Response, left: float) -> None:
    """Give the connection's next reads at most ``left`` seconds (best effort: urllib3
    keeps the socket on its connection object)."""
    sock = getattr(getattr(response.raw, "_connection", None), "sock", None)
    if sock is not None:
        sock.settimeout(max(0.01, min(left, sock.gettimeout() or left)))


def _reached_server(err: requests.exceptions.ConnectionError) -> bool:
    """False only when the connection was never made, so nothing can have been sent."""
    reason = getattr(err.args[0], "reason", None) if err.args else None
    return not isinstance(reason, urllib3.exceptions.NewConnectionError)


def retry_after(response: requests.Response) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date), or None."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def summary(response: requests.Response, limit: int = 200) -> str:
    """A short, safe excerpt of an error body (providers' error texts carry no secrets)."""
    text = response.text[:limit] if response.content else ""
    return " ".join(text.split())
