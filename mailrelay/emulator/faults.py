"""Failure injection: rules that make provider endpoints slow, fail or drop connections.

A rule is consumed by the request it fires on, before that request is handled; the
provider module turns a fired rule into its own error shape. Rules only ever apply to
provider endpoints, never to the control API, so a test can always undo what it did.
"""

from __future__ import annotations

import difflib
import itertools
import random
import threading
from collections.abc import Collection
from dataclasses import asdict, dataclass
from typing import Any

# The endpoints with an effect to perform before a lost answer: the sends, and on
# Microsoft's side also the steps that build a draft and the token redemption (which
# uses up the refresh token in strict rotation mode).
DELIVERING_ENDPOINTS = frozenset({
    "gmail.send", "gmail.upload",
    "graph.sendmail", "graph.send_draft", "graph.create", "graph.attach",
    "graph.upload_session", "graph.upload_chunk", "ms.token",
})
MAX_LATENCY_MS = 120_000


class RuleError(ValueError):
    """A rule the control API refuses, with a message for its caller."""


@dataclass(frozen=True)
class FaultRule:
    endpoint: str
    status: int | None = None
    count: int | None = None
    probability: float | None = None
    retry_after: int | None = None
    latency_ms: int | None = None
    drop: bool = False
    after_send: bool = False
    reason: str | None = None
    mailbox: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def matches(self, endpoint: str, mailbox: str | None) -> bool:
        if self.endpoint not in ("*", endpoint):
            return False
        return self.mailbox is None or (mailbox is not None and mailbox.lower() == self.mailbox)


_KEYS = frozenset(FaultRule.__dataclass_fields__)


def parse_rule(raw: object) -> FaultRule:
    """Check a rule from JSON; anything off is a RuleError naming the field."""
    if not isinstance(raw, dict):
        raise RuleError("a rule must be a JSON object")
    unknown = set(raw) - _KEYS
    if unknown:
        raise RuleError(f"unknown rule fields: {', '.join(sorted(map(str, unknown)))}")
    endpoint = raw.get("endpoint")
    if not isinstance(endpoint, str) or not endpoint:
        raise RuleError("endpoint must be an endpoint name or '*'")
    rule = FaultRule(
        endpoint=endpoint,
        status=_int(raw, "status", 100, 599),
        count=_int(raw, "count", 1, 1_000_000),
        probability=_probability(raw.get("probability")),
        retry_after=_int(raw, "retry_after", 0, 86_400),
        latency_ms=_int(raw, "latency_ms", 0, MAX_LATENCY_MS),
        drop=_bool(raw, "drop"),
        after_send=_bool(raw, "after_send"),
        reason=_text(raw, "reason"),
        mailbox=None if raw.get("mailbox") is None else _text(raw, "mailbox", lower=True),
    )
    if rule.status is None and not rule.drop and not rule.latency_ms:
        raise RuleError("a rule needs a status, drop or latency_ms")
    if rule.status is not None and rule.drop:
        raise RuleError("status and drop exclude each other: a dropped request gets no status")
    if rule.after_send and rule.status is None and not rule.drop:
        raise RuleError("after_send needs a status or drop to answer with")
    if rule.after_send and rule.endpoint not in DELIVERING_ENDPOINTS | {"*"}:
        raise RuleError(f"after_send applies to {', '.join(sorted(DELIVERING_ENDPOINTS))} only")
    return rule


def check_endpoint(endpoint: str, known: Collection[str]) -> None:
    """Refuse an endpoint name no provider route has (a rule for it would never fire),
    with the nearest known name; ``*`` is every endpoint."""
    if endpoint == "*" or endpoint in known:
        return
    hint = difflib.get_close_matches(endpoint, sorted(known), n=1, cutoff=0.5)
    raise RuleError(f"unknown endpoint {endpoint!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")
                    + f" (endpoints: {', '.join(sorted(known))}, or * for all)")


def _int(raw: dict[str, Any], key: str, low: int, high: int) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise RuleError(f"{key} must be an integer from {low} to {high}")
    return value


def _probability(value: object) -> float | None:
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
        raise RuleError("probability must be a number from 0 to 1")
    return float(value)


def _bool(raw: dict[str, Any], key: str) -> bool:
    value = raw.get(key, False)
    if not isinstance(value, bool):
        raise RuleError(f"{key} must be true or false")
    return value


def _text(raw: dict[str, Any], key: str, *, lower: bool = False) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= 200:
        raise RuleError(f"{key} must be a string of 1 to 200 characters")
    return value.lower() if lower else value


class FaultTable:
    """The rules in the order they were added; the first matching one fires."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._lock = threading.Lock()
        self._rules: dict[int, FaultRule] = {}
        self._left: dict[int, int] = {}
        self._ids = itertools.count(1)
        # Seedable so a test can make "probability" deterministic; not for security.
        self._random = rng or random.Random()  # noqa: S311

    def add(self, rule: FaultRule) -> int:
        with self._lock:
            rule_id = next(self._ids)
            self._rules[rule_id] = rule
            if rule.count is not None:
                self._left[rule_id] = rule.count
            return rule_id

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()
            self._left.clear()

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{"id": rule_id, "left": self._left.get(rule_id), **rule.as_dict()}
                    for rule_id, rule in self._rules.items()]

    def take(self, endpoint: str, mailbox: str | None) -> FaultRule | None:
        """The rule that fires for this request, if any, with its use counted."""
        with self._lock:
            for rule_id, rule in self._rules.items():
                if not rule.matches(endpoint, mailbox):
                    continue
                if rule.probability is not None and self._random.random() >= rule.probability:
                    continue
                if rule_id in self._left:
                    self._left[rule_id] -= 1
                    if self._left[rule_id] <= 0:
                        del self._left[rule_id], self._rules[rule_id]
                return rule
            return None
