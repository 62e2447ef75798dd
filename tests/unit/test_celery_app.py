from __future__ import annotations

import beat_schedule
import workers
from mailrelay import providers
from mailrelay.celery_app import CONTROL_QUEUE, DELIVER_TASK, INTAKE_QUEUE, SEND_TASK, app, queue_names


def test_queues_come_from_the_registry() -> None:
    names = {q.name for q in app.conf.task_queues}
    assert names == set(queue_names())
    assert {INTAKE_QUEUE, CONTROL_QUEUE} <= names
    assert {f"mailrelay.{p}" for p in providers.names()} <= names


def test_json_only_and_at_least_once_settings() -> None:
    conf = app.conf
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options["visibility_timeout"] > 0
    assert conf.worker_send_task_events


def test_contract_tasks_are_registered_and_routed() -> None:
    app.loader.import_default_modules()
    assert {SEND_TASK, DELIVER_TASK} <= set(app.tasks)
    assert app.amqp.router.route({}, SEND_TASK)["queue"].name == INTAKE_QUEUE


def test_send_task_hides_message_content_from_events() -> None:
    from mailrelay.tasks.base import RedactedRequest

    request_cls = app.tasks[SEND_TASK].Request
    assert request_cls == "mailrelay.tasks.base:RedactedRequest"
    assert "redacted" in RedactedRequest.kwargsrepr.fget(None)  # type: ignore[attr-defined]


def test_every_beat_entry_names_a_registered_task_on_control() -> None:
    app.loader.import_default_modules()
    for name, entry in beat_schedule.SCHEDULE.items():
        assert entry["task"] in app.tasks, name
        assert entry.get("options", {}).get("queue") == CONTROL_QUEUE, name  # type: ignore[union-attr]
    assert app.conf.beat_schedule == beat_schedule.SCHEDULE


def test_worker_profiles_cover_every_queue() -> None:
    profiles = [workers.load(name) for name in workers.names()]
    served = {queue for profile in profiles for queue in profile.queues}
    assert served == set(queue_names())
    everything = workers.load("all")
    assert set(everything.queues) == set(queue_names())
    for profile in profiles:
        argv = profile.argv()
        assert argv[0] == "worker" and "--prefetch-multiplier" in argv
        assert profile.why
