"""The sink provider: "sends" by recording the MIME message in the outbox database.

Like Django's locmem backend, it is what tests and the benchmark baseline deliver
through. It behaves like a provider where it matters: it builds the real MIME message,
can be told to fail (``inject_fault``, kept in Redis so that every worker process sees
it), can wait ``MAILRELAY_SINK_LATENCY_MS`` to stand in for a provider round trip, and
can answer "was this Message-ID already sent?" for exactly-once recovery.

Faults: a Redis list of JSON objects ``{"code", "after_send", "retry_after"}``, one
popped per send; ``after_send`` records the message and then raises as if the response
had been lost.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, cast

from mailrelay.config import get_settings
from mailrelay.errors import ProviderError
from mailrelay.message import build_mime
from mailrelay.providers.base import (
    Capabilities,
    Outbound,
    ProviderAdapter,
    SendResult,
    TokenSource,
    before_request,
)
from mailrelay.redis_client import get_redis, key
from mailrelay.store import sink_deliveries

FAULTS_KEY = key("sink", "faults")


@dataclass(frozen=True)
class Prepared:
    raw: bytes
    envelope: list[str]


class SinkAdapter(ProviderAdapter):
    name = "sink"
    capabilities = Capabilities(
        max_recipients=1000,
        max_message_bytes=50 * 1024 * 1024,
        inline_images=True,
        large_message_path=None,
        sends_per_minute=None,
        can_verify=True,
    )

    def prepare(self, out: Outbound) -> Prepared:
        raw = build_mime(out.message, message_id=out.rfc822_message_id, date=out.date)
        return Prepared(raw, [mailbox.address for mailbox in out.message.recipients])

    def transmit(self, out: Outbound, prepared: Prepared, tokens: TokenSource | None) -> str:
        before_request(sends=True)
        fault = _next_fault()
        if fault and not fault.get("after_send"):
            raise _fault_error(fault, sent=False)
        latency = get_settings().sink_latency_ms
        if latency:
            time.sleep(latency / 1000)
        delivery_id = sink_deliveries.record(
            message_id=out.message_id, rfc822_message_id=out.rfc822_message_id,
            sender=out.message.sender.address, envelope=prepared.envelope, raw=prepared.raw)
        if fault:
            raise _fault_error(fault, sent=True)
        return delivery_id

    def parse(self, out: Outbound, response: Any) -> SendResult:
        return SendResult(provider_message_id=str(response))

    def find_sent(self, out: Outbound, tokens: TokenSource | None = None) -> str | None:
        return sink_deliveries.find(out.rfc822_message_id)


def _next_fault() -> dict[str, Any] | None:
    raw = cast(bytes | None, get_redis().lpop(FAULTS_KEY))
    return cast(dict[str, Any], json.loads(raw)) if raw else None


def _fault_error(fault: dict[str, Any], *, sent: bool) -> ProviderError:
    return ProviderError(str(fault["code"]), "injected fault", provider="sink",
                         retry_after=fault.get("retry_after"), sent_unknown=sent)


def inject_fault(code: str, *, count: int = 1, after_send: bool = False,
                 retry_after: float | None = None) -> None:
    """Make the next ``count`` sink sends fail with ``code`` (tests and demos)."""
    from mailrelay.errors import lookup

    lookup(code)
    entry = json.dumps({"code": code, "after_send": after_send, "retry_after": retry_after})
    get_redis().rpush(FAULTS_KEY, *([entry] * count))
