"""Intake: validate, persist, route. Shared by the task and the client.

Validation failures are stored too (state `rejected`, with the code), so that a producer
and on-call can look up every request they made. Enqueueing the delivery is the
caller's job (``tasks.enqueue_delivery``): this module knows nothing of Celery.

Routing: the account's provider, unless that provider is under rollout and its gate
(rollout/gate.py) sends the message through the rollout's fallback account or refuses it
(``rollout_gated``). The message must fit the provider that will send it.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailrelay import outcome_target, providers
from mailrelay.config import get_settings
from mailrelay.content import policy as content_policy
from mailrelay.errors import ValidationError
from mailrelay.message import Message, lenient_metadata, thaw, validate
from mailrelay.metrics import INTAKE
from mailrelay.outcome_target import Target
from mailrelay.providers import fit
from mailrelay.rollout import gate
from mailrelay.store import notifications, outbox
from mailrelay.store.outbox import AccountRef, IntakeResult

# An HTML body at least this long is worth one lookup of an earlier delivery of the same
# request before it is sanitized (sanitizing 16 kB costs about as much as a round trip).
REPEAT_LOOKUP_CHARS = 16 * 1024

@dataclass(frozen=True)
class Accepted:
    result: IntakeResult
    provider: str | None

    @property
    def should_route(self) -> bool:
        # A repeat of a queued message is routed again: its first routing may have been
        # lost with the process that made it, and a second deliver task is harmless.
        return self.result.state == "queued"


def take_in(raw: object, *, request_id: str | None, actor: str) -> Accepted:
    account: AccountRef | None = None
    route: gate.Route | None = None
    try:
        message = validate(raw, max_message_bytes=get_settings().max_message_bytes,
                           max_recipients=1_000_000)
        account = _account_for(message)
        route = gate.route(account, _provider_for(message, account),
                           (r.domain for r in message.recipients))
        content_hash = message.content_hash()  # the producer's content, before the policy
        earlier = _stored_before(message, request_id)
        if earlier is not None:
            INTAKE.labels(result="repeated", code="").inc()
            return Accepted(earlier, earlier.provider)
        applied = content_policy.apply(message, account.html_policy)
        message = applied.message
        size = fit.check(message, route.provider)
        result = outbox.accept(message, account, request_id=request_id, actor=actor,
                               size_bytes=size, content_hash=content_hash,
                               html_removed=applied.html_removed, provider=route.provider,
                               via=route.via, route=route.as_json(), refuse=route.refused,
                               notify=_notify_column(message.notify, message.metadata))
    except ValidationError as err:
        result = outbox.reject(raw, err, request_id=request_id, actor=actor, account=account,
                               from_address=_raw_from(raw),
                               route=route.as_json() if route and route.refused is err else None,
                               notify=_refused_notify(raw))
        INTAKE.labels(result="rejected", code=err.code).inc()
        return Accepted(result, None)
    INTAKE.labels(result="accepted" if result.created else "repeated", code="").inc()
    # A repeat goes where the earlier message went, whatever the gate says now.
    return Accepted(result, result.provider or route.provider)


def _stored_before(message: Message, request_id: str | None) -> IntakeResult | None:
    """A redelivered request with a large HTML body is looked up before its HTML is
    sanitized again: sanitizing it is what costs (a hostile body most of all), and a
    redelivery finds the first delivery's row. Small bodies skip the round trip: the
    insert finds the earlier row anyway."""
    if request_id is None or len(message.html or "") < REPEAT_LOOKUP_CHARS:
        return None
    return outbox.earlier_request(request_id)


def _account_for(message: Message) -> AccountRef:
    account = outbox.find_account(message.sender.address)
    if account is None:
        raise ValidationError("unknown_account", "no account is registered for the from address",
                              field="from")
    if account.state == "disabled":
        raise ValidationError("account_disabled", "the sending account is disabled", field="from")
    return account


def _provider_for(message: Message, account: AccountRef) -> str:
    provider = message.provider or account.provider
    providers.queue_for(provider)  # raises unknown_provider with a hint
    if provider != account.provider:
        raise ValidationError("invalid_message",
                              f"the account sends through {account.provider}, not {provider}",
                              field="provider")
    return provider


def _default_target() -> Target | None:
    settings = get_settings()
    return outcome_target.configured(settings.notify_task, settings.notify_queue)


def _notify_column(target: Target | None, metadata: object) -> str | None:
    """Where the outcome goes: the request's ``notify``, else the configured default."""
    target = target or _default_target()
    if target is None:
        return None
    return notifications.target_json(target.task, target.queue, thaw(metadata))


def _refused_notify(raw: object) -> str | None:
    """A refused request is reported where it asked (if that much of it is valid), else
    to the default; with its metadata if that is valid."""
    return _notify_column(outcome_target.lenient(raw), lenient_metadata(raw))


def _raw_from(raw: object) -> str | None:
    if isinstance(raw, dict):
        value = raw.get("from")
        if isinstance(value, str):
            return value.strip().lower()[:320]
    return None


def reject_overtime(raw: object, *, request_id: str | None, actor: str) -> IntakeResult:
    """A request intake could not finish within MAILRELAY_INTAKE_TIME_LIMIT: stored as
    rejected, so that the producer learns it and a redelivery finds the row."""
    err = ValidationError("intake_timeout", f"intake did not finish with the request within "
                          f"{get_settings().intake_time_limit} s")
    INTAKE.labels(result="rejected", code=err.code).inc()
    return outbox.reject(raw, err, request_id=request_id, actor=actor, from_address=_raw_from(raw),
                         notify=_refused_notify(raw))


def reject_call(detail: str, *, request_id: str | None, actor: str,
                raw: object = None) -> IntakeResult:
    """A task call with wrong arguments (``raw``: its message, if it carried one, whose
    ``notify`` is told; nothing of it is stored)."""
    err = ValidationError("invalid_message", detail)
    INTAKE.labels(result="rejected", code=err.code).inc()
    return outbox.reject(None, err, request_id=request_id, actor=actor,
                         notify=_refused_notify(raw))
