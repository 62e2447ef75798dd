from __future__ import annotations

import pytest

import beat_schedule
import workers
from mailrelay import providers
from mailrelay.celery_app import (
    CONTROL_QUEUE,
    DELIVER_TASK,
    INTAKE_QUEUE,
    REDACTED_KWARGS,
    SEND_TASK,
    app,
    queue_names,
)


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
    app.loader.import_default_modules()
    request_cls = app.tasks[SEND_TASK].Request
    assert request_cls == "mailrelay.tasks.base:RedactedRequest"
    # Every mailrelay task: a producer can put anything in any task's arguments.
    assert {task.Request for name, task in app.tasks.items() if name.startswith("mailrelay.")} == {
        request_cls}


def test_a_send_published_through_the_app_carries_no_message_in_headers_or_sent_event() -> None:
    secret = {"from": "a@example.com", "to": ["hidden.rcpt@example.org"], "subject": "hidden"}
    for options in ({}, {"kwargsrepr": repr(secret), "argsrepr": repr([secret])}):
        built = app.amqp.create_task_message("id-1", SEND_TASK, (), {"message": secret},
                                             create_sent_event=True, **options)
        shown = [built.headers["argsrepr"], built.headers["kwargsrepr"],
                 built.sent_event["args"], built.sent_event["kwargs"]]
        assert shown == ["()", REDACTED_KWARGS, "()", REDACTED_KWARGS]
        assert built.body[1] == {"message": secret}  # the task still reads it
    # Other tasks keep Celery's reprs (mailrelay.deliver's are its message id).
    other = app.amqp.create_task_message("id-2", DELIVER_TASK, (), {"message_id": "m-1"})
    assert other.headers["kwargsrepr"] == "{'message_id': 'm-1'}"


def test_every_beat_entry_names_a_registered_task_on_control() -> None:
    app.loader.import_default_modules()
    for name, entry in beat_schedule.SCHEDULE.items():
        assert entry["task"] in app.tasks, name
        assert entry.get("options", {}).get("queue") == CONTROL_QUEUE, name  # type: ignore[union-attr]
    assert set(app.conf.beat_schedule) == set(beat_schedule.SCHEDULE)
    for name, entry in app.conf.beat_schedule.items():
        assert "interval_setting" not in entry, name  # Celery would refuse the key
        declared = beat_schedule.SCHEDULE[name]
        if "interval_setting" not in declared:
            assert entry == declared, name


def test_an_interval_setting_moves_the_entry_and_its_expiry(monkeypatch: pytest.MonkeyPatch) -> None:
    from mailrelay.celery_app import _beat_schedule
    from mailrelay.config import get_settings

    monkeypatch.setenv("MAILRELAY_EXPORT_INTERVAL", "2")
    get_settings.cache_clear()
    try:
        entry = _beat_schedule()["export-metrics"]
    finally:
        monkeypatch.delenv("MAILRELAY_EXPORT_INTERVAL")
        get_settings.cache_clear()
    assert entry["schedule"] == 2.0
    assert entry["options"] == {"queue": CONTROL_QUEUE, "expires": 1.8}  # type: ignore[comparison-overlap]
    assert _beat_schedule()["export-metrics"]["schedule"] == 30.0


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
