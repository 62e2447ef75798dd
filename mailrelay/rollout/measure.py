"""What Prometheus says about a provider over a rollout's window (HTTP API, instant queries).

From the metrics every worker exports (summed over workers and their pool children):

- traffic: ``sum(rate(mailrelay_deliveries_total{provider=P}[W]))``, attempts per second;
- error ratio: the same restricted to the provider's error codes (``or vector(0)``: no
  such series means no such error, not no data), divided by the traffic;
- p95: ``histogram_quantile(0.95, sum by (le) (rate(mailrelay_delivery_seconds_bucket{provider=P}[W])))``.

An empty answer or NaN is "no data" (the decision holds); a failed request, a timeout, an
error answer or a malformed one is a query error (it holds too, and is counted).
"""

from __future__ import annotations

import math
import re
from typing import Any

import requests

from mailrelay.rollout.decide import Measurement
from mailrelay.rollout.policy import Policy

_NAME = re.compile(r"[a-z0-9_]+")


class QueryError(Exception):
    """Prometheus did not answer a query usefully; the message says how (no content)."""


def queries(provider: str, policy: Policy) -> dict[str, str]:
    for name in (provider, *policy.error_codes):
        if not _NAME.fullmatch(name):  # label values go into PromQL as they are
            raise ValueError(f"not a provider or code name: {name!r}")
    window = f"[{policy.window_seconds}s]"
    sends = f'mailrelay_deliveries_total{{provider="{provider}"}}'
    failed = f'mailrelay_deliveries_total{{provider="{provider}",code=~"{"|".join(policy.error_codes)}"}}'
    return {
        "traffic": f"sum(rate({sends}{window}))",
        "error_ratio": f"(sum(rate({failed}{window})) or vector(0)) / sum(rate({sends}{window}))",
        "latency_p95": ("histogram_quantile(0.95, sum by (le) (rate("
                        f'mailrelay_delivery_seconds_bucket{{provider="{provider}"}}{window})))'),
    }


def measure(provider: str, policy: Policy, *, url: str, timeout: float,
            session: requests.Session | None = None) -> Measurement:
    """The three numbers, or a Measurement carrying the query error."""
    if not url:
        return Measurement(None, None, None, error="MAILRELAY_PROMETHEUS_URL is not set")
    http = session or requests.Session()
    try:
        found = {name: _instant(http, url, query, timeout)
                 for name, query in queries(provider, policy).items()}
    except QueryError as err:
        return Measurement(None, None, None, error=str(err))
    finally:
        if session is None:
            http.close()
    return Measurement(found["traffic"], found["error_ratio"], found["latency_p95"])


def _instant(http: requests.Session, url: str, query: str, timeout: float) -> float | None:
    """One instant query's single value; None when the answer is empty."""
    try:
        response = http.get(url.rstrip("/") + "/api/v1/query", params={"query": query},
                            timeout=timeout)
    except requests.Timeout:
        raise QueryError(f"no answer within {timeout:g}s") from None
    except requests.RequestException as err:
        raise QueryError(f"unreachable ({type(err).__name__})") from None
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    if response.status_code != 200 or not isinstance(body, dict) or body.get("status") != "success":
        kind = body.get("errorType") if isinstance(body, dict) else None
        raise QueryError(f"HTTP {response.status_code}" + (f", {kind}" if kind else ""))
    return _value(body.get("data"))


def _value(data: Any) -> float | None:
    if not isinstance(data, dict) or data.get("resultType") not in ("vector", "scalar"):
        raise QueryError("unexpected answer shape")
    result = data.get("result")
    if data["resultType"] == "scalar":
        result = [{"value": result}]
    if not isinstance(result, list):
        raise QueryError("unexpected answer shape")
    if not result:
        return None
    if len(result) != 1:
        raise QueryError(f"{len(result)} series where one was expected")
    try:
        value = float(result[0]["value"][1])
    except (KeyError, IndexError, TypeError, ValueError):
        raise QueryError("unexpected sample") from None
    return None if math.isnan(value) else value
