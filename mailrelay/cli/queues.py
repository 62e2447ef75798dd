"""`mailrelay queues`: each queue's length and consumers; pause and resume a provider's.

Pausing asks every worker consuming ``mailrelay.PROVIDER`` to stop consuming it (Celery's
``cancel_consumer``): tasks already reserved still run, new ones wait in the broker and
their messages stay ``queued`` in the outbox, so nothing is lost and nothing is sent. The
workers that were paused are remembered in Redis, and `resume` asks exactly those to
consume again (``add_consumer``). A pause lives in the workers' memory: a worker started
or restarted meanwhile consumes its profile's queues. To keep a provider stopped across
restarts, stop its worker service instead.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from mailrelay import providers
from mailrelay.cli.exits import FAILED, NOT_FOUND, USAGE, Exit
from mailrelay.cli.output import dry_run_option, emit_json, json_option, table

# How long a broadcast waits for the workers' answers.
REPLY_TIMEOUT = 2.0


def _pause_key(queue: str) -> str:
    from mailrelay.redis_client import key

    return key("queue-paused", queue)


@click.group("queues")
def command() -> None:
    """Each queue's length and consumers; pause and resume a provider's queue."""


@command.command("list")
@json_option
def list_(as_json: bool) -> None:
    """Every mailrelay queue: tasks waiting in the broker, workers consuming it, and the
    workers a `queues pause` stopped. A provider queue with tasks and no consumer is
    what MailrelayQueueWithoutWorker pages about."""
    from mailrelay.redis_client import get_redis
    from mailrelay.tasks import queue_stats

    stats = queue_stats.read()
    rows = []
    for queue, found in stats.items():
        paused = get_redis().get(_pause_key(queue))
        rows.append({"queue": queue, "length": found.length, "consumers": found.consumers,
                     "paused_workers": json.loads(paused) if paused else []})
    if as_json:
        emit_json(rows)
        return
    table([{**row, "paused_workers": ", ".join(row["paused_workers"])} for row in rows],
          ["queue", "length", "consumers", "paused_workers"], title="queues")


def _consuming(queue: str) -> list[str]:
    from mailrelay.celery_app import app

    replies = app.control.inspect(timeout=REPLY_TIMEOUT).active_queues() or {}
    return sorted(worker for worker, queues in replies.items()
                  if any(q.get("name") == queue for q in queues or ()))


@command.command("pause")
@click.argument("provider", type=click.Choice(providers.names()))
@click.option("--reason", required=True, help="Why; printed back and logged by the workers.")
@dry_run_option
@json_option
def pause(provider: str, reason: str, dry_run: bool, as_json: bool) -> None:
    """Stop every worker consuming PROVIDER's queue; its tasks wait in the broker.
    Exit 3 if no worker consumes it now."""
    from mailrelay.celery_app import app
    from mailrelay.redis_client import get_redis

    queue = providers.queue_for(provider)
    workers = _consuming(queue)
    if not workers:
        raise Exit(f"no worker consumes {queue} now: nothing to pause", NOT_FOUND)
    if not dry_run:
        before = get_redis().get(_pause_key(queue))
        known = set(json.loads(before)) if before else set()
        get_redis().set(_pause_key(queue), json.dumps(sorted(known | set(workers))))
        app.control.cancel_consumer(queue, destination=workers, reply=True,
                                    timeout=REPLY_TIMEOUT)
    _report({"queue": queue, "workers": workers, "action": "pause", "reason": reason,
             "dry_run": dry_run}, as_json)


@command.command("resume")
@click.argument("provider", type=click.Choice(providers.names()))
@dry_run_option
@json_option
def resume(provider: str, dry_run: bool, as_json: bool) -> None:
    """Ask the workers `queues pause` stopped to consume PROVIDER's queue again.
    Exit 3 if it is not paused; exit 1 if a paused worker did not answer (it may be gone:
    `queues list` shows who consumes now)."""
    from mailrelay.celery_app import app
    from mailrelay.redis_client import get_redis

    queue = providers.queue_for(provider)
    paused = get_redis().get(_pause_key(queue))
    if not paused:
        raise Exit(f"{queue} is not paused (Redis keeps no pause for it)", NOT_FOUND)
    workers: list[str] = json.loads(paused)
    answered: list[str] = []
    if not dry_run:
        replies = app.control.add_consumer(queue, destination=workers, reply=True,
                                           timeout=REPLY_TIMEOUT) or []
        answered = sorted(name for reply in replies for name in reply)
        get_redis().delete(_pause_key(queue))
    _report({"queue": queue, "workers": workers, "action": "resume", "dry_run": dry_run},
            as_json)
    missing = sorted(set(workers) - set(answered))
    if not dry_run and missing:
        raise Exit(f"no answer from {', '.join(missing)}: check `mailrelay queues list`", FAILED)


def _report(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json(result)
        return
    verb = {"pause": "paused", "resume": "resumed"}[result["action"]]
    prefix = "would have " if result["dry_run"] else ""
    click.echo(f"{result['queue']}: {prefix}{verb} on {', '.join(result['workers'])}")


@command.command("dead")
@json_option
def dead(as_json: bool) -> None:
    """RabbitMQ only: the tasks in mailrelay.dead, handed out more often than
    MAILRELAY_DELIVERY_LIMIT allows (MailrelayDeadLettered): task, task id, the queue it
    died in, why, and a delivery's message id (a request's content is never shown).
    Nothing moves. On Redis there is no such queue: an empty list.

    --json prints a list of {"task", "task_id", "queue", "reason", "message_id"}."""
    from mailrelay.tasks import dead_letters

    rows = [task.as_dict() for task in dead_letters.listed()] if dead_letters.available() else []
    if as_json:
        emit_json(rows)
        return
    if not dead_letters.available():
        click.echo("the broker is Redis: nothing is dead-lettered")
        return
    table(rows, ["task", "task_id", "queue", "reason", "message_id"], title="mailrelay.dead")


@command.command("requeue-dead")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@dry_run_option
@json_option
def requeue_dead(yes: bool, dry_run: bool, as_json: bool) -> None:
    """RabbitMQ only: put every task in mailrelay.dead back on the queue it died in, once
    what killed it is fixed (runbooks/alerts/MailrelayDeadLettered.md). A request
    (mailrelay.send) goes back to intake, which stores it once whatever its history; a
    delivery goes back to its provider's queue, where the outbox's claim keeps it from
    sending twice. Asks unless --yes (without a terminal, --yes is required).

    --json prints {"dry_run", "moved": [{"task", "task_id", "queue", "reason",
    "message_id"}, ...]} (with --dry-run, what would move)."""
    from mailrelay.tasks import dead_letters

    if not dead_letters.available():
        result: dict[str, Any] = {"dry_run": dry_run, "moved": []}
        if as_json:
            emit_json(result)
        else:
            click.echo("the broker is Redis: nothing is dead-lettered")
        return
    waiting = dead_letters.listed()
    if dry_run or not waiting:
        moved = waiting
    else:
        if not yes:
            if not sys.stdin.isatty():
                raise Exit(f"not moving {len(waiting)} dead-lettered tasks without "
                           "confirmation: run in a terminal or pass --yes", USAGE)
            click.confirm(f"Put {len(waiting)} dead-lettered tasks back on their queues?",
                          abort=True, err=True)
        moved = dead_letters.requeue()
    if as_json:
        emit_json({"dry_run": dry_run, "moved": [task.as_dict() for task in moved]})
        return
    prefix = "would move" if dry_run else "moved"
    click.echo(f"{prefix} {len(moved)} tasks back to their queues")
