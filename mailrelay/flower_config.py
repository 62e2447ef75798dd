"""Flower's options for mailrelay, and the file Flower reads them from.

``mailrelay flower`` runs Flower with ``--conf`` naming this file. Flower hands it to
``tornado.options.parse_config_file``, which executes it in a fresh namespace (holding
only ``__file__``) and takes every top-level name there that is one of Flower's options.
Executed that way, the file publishes ``flower_options()`` as top-level names; imported
as a module, it only defines functions and constants, none named like an option.

How the password travels: from ``MAILRELAY_FLOWER_AUTH`` in the environment of Flower's
own process (``/proc/PID/environ`` is readable by that user and root only) into Flower's
memory, through this file. It is never on a command line (``ps`` shows argv to every
user), never in a ``FLOWER_*`` variable and never written to disk. ``basic_auth`` is
given as a list: a string would be split at commas, as ``FLOWER_BASIC_AUTH`` is.

Executed by Flower, the file also installs ``drop_producer_arguments`` in Flower's event
state, so that a task no worker has received yet shows no arguments (see there).

The same file works with Celery's own command, ``celery -A mailrelay.celery_app flower
--conf=PATH`` with PATH this file's (``mailrelay.flower_config.PATH``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mailrelay.config import Settings, get_settings
from mailrelay.errors import ConfigError

PATH = Path(__file__).resolve()
AUTH_ENV = "MAILRELAY_FLOWER_AUTH"

# Flower keeps the tasks it has seen in memory, 100 000 by default, dropping the oldest
# past the limit. Ten thousand show what just happened; the outbox (`mailrelay status`)
# is the record of every message.
MAX_TASKS = 10_000
# Worker entries kept in memory, and how long an offline worker's entries and Prometheus
# labels stay: workers in containers get new names on every restart.
MAX_WORKERS = 500
PURGE_OFFLINE_WORKERS_SECONDS = 24 * 3600
# The task list's columns: no args, kwargs or result (those hold ids and states only,
# but the list need not show them; a task's own page does).
TASKS_COLUMNS = "name,uuid,state,received,started,runtime,worker,retries"


def check_auth(raw: str) -> str:
    """Return ``user:password`` if ``raw`` is one; else raise ConfigError saying why.

    The message names the variable and the problem, never the value.
    """
    if not raw:
        raise ConfigError(
            f"{AUTH_ENV} is empty: mailrelay starts Flower only behind a login; "
            "set it to user:password")
    user, colon, password = raw.partition(":")
    if not colon:
        raise ConfigError(f"{AUTH_ENV} must be user:password; the value (hidden) has no ':'")
    if not user or not password:
        part = "user" if not user else "password"
        raise ConfigError(f"{AUTH_ENV} must be user:password; the {part} part is empty")
    if any(ord(char) < 32 or ord(char) == 127 for char in raw):
        raise ConfigError(f"{AUTH_ENV} contains a control character (a newline, say); "
                          "a browser cannot send that")
    return raw


def flower_options(settings: Settings) -> dict[str, Any]:
    """Flower's options for these settings, by Flower's option names."""
    return {
        "basic_auth": [check_auth(settings.flower_auth)],
        "max_tasks": MAX_TASKS,
        "max_workers": MAX_WORKERS,
        "purge_offline_workers": PURGE_OFFLINE_WORKERS_SECONDS,
        # Nothing of Flower's state on disk (its shelve file in the working directory).
        "persistent": False,
        # A login to Flower is a login to look: no revoking, rate limits, pool resizing,
        # worker shutdown or task sending through it (sending mailrelay.send from Flower
        # would send mail as any registered account). Operators act with `mailrelay`.
        "read_only": True,
        # Workers already send task events (worker_send_task_events, `--task-events`).
        # Flower's periodic `enable_events` broadcast is one small control message every
        # 5 s and switches events back on after a `celery control disable_events`, so it
        # stays on.
        "enable_events": True,
        "tasks_columns": TASKS_COLUMNS,
        "logging": settings.log_level,
    }


PRODUCER_FIELDS = ("args", "kwargs")


def drop_producer_arguments(event: dict[str, Any]) -> dict[str, Any]:
    """``event`` without the arguments a producer described, if it is a ``task-sent`` event.

    A task's args and kwargs reach Flower twice: in ``task-sent``, as the producer chose
    to show them (plain ``send_task`` puts ``repr(kwargs)`` there, the whole message, and
    mailrelay's own app sends that event), and in ``task-received``, as the worker shows
    them (``RedactedRequest``: ids only). Flower keeps the first until the second arrives,
    so a task no worker has taken yet would show its message. Only the worker's view is
    kept: a task shows no arguments until a worker has received it.
    """
    if event.get("type") != "task-sent":
        return event
    return {key: value for key, value in event.items() if key not in PRODUCER_FIELDS}


def install_event_filter() -> None:
    """Make Flower's event state apply ``drop_producer_arguments`` to every event it keeps.

    Flower offers no hook for this; ``EventsState.event(event)`` is where each event is
    stored and indexed for search, so it is wrapped, once per process.
    """
    from flower.events import EventsState

    if getattr(EventsState, "_mailrelay_filtered", False):
        return
    original = EventsState.event

    def event(self: Any, event: dict[str, Any]) -> Any:
        return original(self, drop_producer_arguments(event))

    EventsState.event = event
    EventsState._mailrelay_filtered = True


if "__name__" not in globals():  # executed by Flower as its --conf file, not imported
    globals().update(flower_options(get_settings()))
    install_event_filter()
