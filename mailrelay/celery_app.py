"""The Celery app: queues generated from the provider registry, safe defaults, one place.

Why these settings:
- JSON only: a pickle-accepting worker runs whatever a producer sends it.
- ``task_acks_late`` + ``task_reject_on_worker_lost``: a task is acked after it ran, and
  a pool child killed mid-task puts its task back instead of dropping it. The outbox
  claim makes the second run harmless.
- prefetch 1: a delivery worker holds at most one unstarted task per process, so a slow
  mailbox does not strand others' messages behind it.
- ``visibility_timeout`` (MAILRELAY_VISIBILITY_TIMEOUT, 900 s): Redis redelivers an
  unacked task after this. It must exceed the longest task (the lease,
  MAILRELAY_LEASE_SECONDS) plus the longest countdown (MAILRELAY_COUNTDOWN_MAX), or a
  waiting task would run twice; config.py refuses settings that break this.
- On RabbitMQ (broker_queues.py): quorum queues declared with a delivery limit and a
  dead-letter queue, publisher confirms (``confirm_publish``: a publish returns only
  once the broker has the task, or raises), topic exchanges for native delayed delivery.
"""

from __future__ import annotations

import os
from typing import Any, cast

from celery import Celery, signals
from celery.app.amqp import AMQP

from mailrelay import broker_queues, metrics_server, providers
from mailrelay.config import get_settings

INTAKE_QUEUE = "mailrelay.intake"
CONTROL_QUEUE = "mailrelay.control"
SEND_TASK = "mailrelay.send"
REDACTED_KWARGS = "{'message': '<redacted>'}"
DELIVER_TASK = "mailrelay.deliver"


def queue_names() -> list[str]:
    return [INTAKE_QUEUE, CONTROL_QUEUE, *(providers.queue_for(name) for name in providers.names())]


def declared_queues() -> list[Any]:
    """mailrelay's queues as the configured broker declares them."""
    settings = get_settings()
    amqp = broker_queues.is_amqp(settings.broker_url)
    return [broker_queues.declared(name, amqp=amqp, delivery_limit=settings.delivery_limit,
                                   dead_letters=name != CONTROL_QUEUE)
            for name in queue_names()]


# Redis: a broker that stops answering without closing the connection (frozen, failed
# over, behind a dead NAT entry) would hold every publish forever, the reconciler's on the
# solo control worker included. A command unanswered for this long fails the publish;
# consuming is unaffected (kombu's BRPOP waits 1 s per call).
REDIS_SOCKET_TIMEOUT = 15.0
REDIS_CONNECT_TIMEOUT = 5.0


def _broker_options(broker_url: str, visibility_timeout: int) -> dict[str, object]:
    if broker_queues.is_amqp(broker_url):
        return {"confirm_publish": True}
    return {"visibility_timeout": visibility_timeout, "socket_timeout": REDIS_SOCKET_TIMEOUT,
            "socket_connect_timeout": REDIS_CONNECT_TIMEOUT}


def _beat_schedule() -> dict[str, dict[str, object]]:
    import beat_schedule

    return {name: _with_interval(entry) for name, entry in beat_schedule.SCHEDULE.items()}


def _with_interval(entry: dict[str, object]) -> dict[str, object]:
    """An entry whose ``interval_setting`` names a setting runs at that setting's interval;
    its ``expires`` follows (a run not started before the next is due is dropped)."""
    entry = dict(entry)
    setting = entry.pop("interval_setting", None)
    if setting is not None:
        interval = float(getattr(get_settings(), str(setting)))
        entry["schedule"] = interval
        options = dict(cast(dict[str, object], entry.get("options", {})))
        options["expires"] = max(interval * 0.9, 1.0)
        entry["options"] = options
    return entry


class RedactingAMQP(AMQP):  # type: ignore[misc]
    """Celery's message builder, with ids-only reprs for ``mailrelay.send``.

    Whoever publishes through this app (``send_async``, a caller's own ``send_task``, a
    task retried by a worker), the message travels neither in the ``argsrepr`` and
    ``kwargsrepr`` headers nor in the ``task-sent`` event built with them (what Flower
    and ``celery events`` show). The task reads its message from the body.
    """

    def as_task_v2(self, task_id: str, name: str, *args: Any, **options: Any) -> Any:
        if name == SEND_TASK:
            options.update(argsrepr="()", kwargsrepr=REDACTED_KWARGS)
        return super().as_task_v2(task_id, name, *args, **options)


def make_app() -> Celery:
    settings = get_settings()
    celery = Celery("mailrelay", amqp=RedactingAMQP, include=[
        "mailrelay.tasks.intake", "mailrelay.tasks.deliver", "mailrelay.tasks.control",
        "mailrelay.tasks.bench"])
    celery.conf.update(
        broker_url=settings.broker_url,
        result_backend=settings.result_backend,
        result_expires=86400,
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_queues=declared_queues(),
        task_default_queue=CONTROL_QUEUE,
        task_create_missing_queues=False,
        task_routes={SEND_TASK: {"queue": INTAKE_QUEUE}},
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        worker_prefetch_multiplier=1,
        broker_transport_options=_broker_options(settings.broker_url,
                                                 settings.visibility_timeout),
        result_backend_transport_options={"visibility_timeout": settings.visibility_timeout},
        broker_connection_retry_on_startup=True,
        worker_send_task_events=True,
        task_send_sent_event=True,
        enable_utc=True,
        timezone="UTC",
        beat_schedule=_beat_schedule(),
        worker_hijack_root_logger=True,
    )
    return celery


metrics_server.prepare(get_settings().metrics_port)
app = make_app()


@signals.worker_init.connect
def _leave_messages_out_of_logs(**_: Any) -> None:
    # In the worker's main process, before the pool forks: its children inherit it.
    from mailrelay import celery_logs

    celery_logs.install()


@signals.worker_init.connect
def _declare_dead_letters(**_: Any) -> None:
    # Before the worker consumes anything that could pass its delivery limit.
    # Waits for the broker as the worker's own start does (broker_connection_retry_on_startup).
    if broker_queues.is_amqp(get_settings().broker_url):
        with app.connection_for_write() as connection:
            broker_queues.declare_dead_letters(connection)


@signals.worker_init.connect
def _serve_metrics(**_: Any) -> None:
    if get_settings().metrics_port:
        metrics_server.serve(get_settings().metrics_port)


@signals.beat_init.connect
def _serve_beat_metrics(**_: Any) -> None:
    # Beat records nothing itself; its /metrics answering is its liveness for Prometheus
    # ("beat down"): the export and the controller stop silently when beat does.
    if get_settings().metrics_port:
        metrics_server.serve(get_settings().metrics_port)


@signals.worker_process_shutdown.connect
def _child_metrics_done(**_: Any) -> None:
    metrics_server.child_exited(os.getpid())


@signals.worker_shutdown.connect
def _metrics_cleanup(**_: Any) -> None:
    metrics_server.cleanup()
