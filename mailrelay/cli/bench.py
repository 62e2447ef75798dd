"""`mailrelay bench`: what a team asks before adopting mailrelay, measured in one run.

- **Throughput ratio**: `mailrelay.deliver` against a bare Celery task that makes the
  same provider call (the sink adapter's insert, or the Gmail adapter's HTTPS request to
  the emulator with a fixed token) on the same worker, pool and concurrency, at a
  provider latency of ``--latency-ms`` (the sink's wait, or the emulator's). Each side's
  round starts from a full queue: the worker's consumer is cancelled, the tasks are
  queued, and the round is timed from adding the consumer back to the last task done.
- **Intake rate**: producer processes (bench_producers) publish ``mailrelay.send`` as a
  producer service would; timed until every message is validated, stored and routed to
  its provider's queue, through a worker of the intake profile. Those messages are the
  ones the next delivery round sends.
- **Overhead per send**: each attempt's span from claim to finish less the time spent
  in the provider's requests (``attempts.provider_ms``), p50 and p99.
- **CPU per send**: the CPU of the worker's process tree, PostgreSQL (the postmaster's
  tree) and Redis over a round, from /proc, per message, for each side.
- **Token herd** (gmail): the emulator expires every access token, then ``--herd``
  deliveries of one account start at once; the token requests the emulator saw.
- **Memory**: the largest resident set of a worker process at the end of the run.

Rounds alternate between the sides and medians count, because shared machines are
noisy; ratios compare like with like within one run.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import statistics
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from mailrelay.cli import bench_proc
from mailrelay.cli.bench_producers import Producers
from mailrelay.cli.bench_report import Round, Sample, median_cpu, median_parts, print_table, targets
from mailrelay.cli.bench_rig import SENDERS, Provider, Rig, prepare_gmail, services, unfinished
from mailrelay.cli.output import emit_json, json_option


@click.command("bench")
@click.option("--provider", type=click.Choice(["sink", "gmail"]), default="gmail", show_default=True,
              help="gmail: HTTPS calls to the emulator; sink: a local insert.")
@click.option("--messages", default=300, show_default=True, help="Messages per round and side.")
@click.option("--rounds", default=3, show_default=True, help="Rounds per side; the median counts.")
@click.option("--concurrency", default=8, show_default=True, help="Delivery worker processes.")
@click.option("--latency-ms", default="50", show_default=True,
              help="Provider latency, comma-separated for several (the first is the headline).")
@click.option("--producers", default=2, show_default=True, help="Producer processes for intake.")
@click.option("--intake-concurrency", type=int, help="Intake worker processes (default: the profile's).")
@click.option("--herd", default=100, show_default=True,
              help="Deliveries meeting an expired token at once (gmail; 0 skips it).")
@click.option("--database-url", help="Outbox for the run (default: a fresh SQLite file). "
                                     "PostgreSQL gives the production picture.")
@click.option("--rollout", is_flag=True,
              help="Set a rollout on the provider at 100% first: every intake goes through the gate.")
@click.option("--notify", is_flag=True,
              help="Also run rounds whose messages carry a notify (the outcome task published "
                   "to a queue of the bench's): the cost of outcome notifications.")
@json_option
def command(provider: str, messages: int, rounds: int, concurrency: int, latency_ms: str,
            producers: int, intake_concurrency: int | None, herd: int, database_url: str | None,
            rollout: bool, notify: bool, as_json: bool) -> None:
    """Measure intake rate, delivery throughput against a bare Celery task, overhead and CPU
    per send, the token herd and worker memory, in one run."""
    try:
        latencies = [int(x) for x in latency_ms.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter("comma-separated whole milliseconds", param_hint="--latency-ms") from None
    if not latencies or min(latencies) < 0 or min(messages, rounds, concurrency, producers) < 1:
        raise click.UsageError("--latency-ms, --messages, --rounds, --concurrency and --producers "
                               "must be positive")
    workdir = Path(tempfile.mkdtemp(prefix="mailrelay-bench-"))
    _configure(database_url, workdir)
    from mailrelay.config import get_settings

    with _stack(workdir) as stack:
        kind = prepare_gmail(stack) if provider == "gmail" else Provider("sink")
        if rollout:
            _set_rollout(provider)
        result = _run(stack, kind, latencies, messages=messages, rounds=rounds,
                      concurrency=concurrency, producers=producers,
                      intake_concurrency=intake_concurrency, herd=herd if provider == "gmail" else 0,
                      notify=notify)
    result["settings"] = {
        "provider": provider, "database": get_settings().database_url.split(":")[0].split("+")[0],
        "broker": get_settings().broker_url.split(":")[0], "latency_ms": latencies,
        "messages": messages, "rounds": rounds, "concurrency": concurrency,
        "producers": producers, "intake_concurrency": intake_concurrency or _intake_default(),
        "herd": herd if provider == "gmail" else 0, "rollout": rollout, "notify": notify,
        "cpus": os.cpu_count()}
    if as_json:
        emit_json(result)
    else:
        print_table(result)
    click.echo(json.dumps({"workdir": str(workdir)}), err=True)


def _configure(database_url: str | None, workdir: Path) -> None:
    from mailrelay.auth.crypto import new_key

    os.environ["MAILRELAY_DATABASE_URL"] = database_url or f"sqlite:///{workdir / 'bench.db'}"
    os.environ.setdefault("MAILRELAY_SECRET_KEY", new_key())
    from mailrelay.auth import accounts
    from mailrelay.config import get_settings
    from mailrelay.store import migrate

    get_settings.cache_clear()
    migrate.upgrade(get_settings().database_url)
    if unfinished():
        raise click.ClickException("the outbox has unfinished messages: the benchmark needs "
                                   "an outbox of its own (--database-url)")
    if SENDERS["sink"] not in {a["address"] for a in accounts.list_all()}:
        accounts.add("sink", SENDERS["sink"])


@contextlib.contextmanager
def _stack(workdir: Path) -> Iterator[Any]:
    from mailrelay.devstack import Stack

    stack = Stack(workdir)
    try:
        yield stack
    finally:
        stack.stop()


def _intake_default() -> int:
    import workers

    return int(workers.load("intake").concurrency)


def _run(stack: Any, provider: Provider, latencies: list[int], *, messages: int, rounds: int,
         concurrency: int, producers: int, intake_concurrency: int | None,
         herd: int, notify: bool = False) -> dict[str, Any]:
    service_pids = services()
    intake = stack.start_worker("intake", concurrency=intake_concurrency)
    _wait_ready(stack, "worker-intake", f"intake@{socket.gethostname()}")
    pool = Producers(get_settings_broker(), producers)
    samples: list[Sample] = []
    intake_rounds: list[Round] = []
    intake_bare: list[Round] = []
    rss: list[float] = []
    herd_result: tuple[int, int] | None = None
    try:
        for latency in latencies:
            env = provider.set_latency(latency)
            name = f"bench-{latency}@{socket.gethostname()}"
            worker = stack.start(f"worker-{provider.name}-{latency}", [
                sys.executable, "-m", "celery", "-A", "mailrelay.celery_app", "worker", "-Q",
                provider.queue, "-P", "prefork", "-c", str(concurrency),
                "--prefetch-multiplier", "1", "-l", "warning", "--without-gossip",
                "--without-mingle", "-n", name], env=env)
            _wait_ready(stack, f"worker-{provider.name}-{latency}", name)
            rig = Rig(provider, worker, name, intake, pool, service_pids)
            warm = concurrency * 4  # connections, imports, prepared statements, the token
            rig.bare(warm)
            rig.take_in_bare(warm)
            rig.take_in(warm)
            rig.relay(warm)
            sample = Sample(latency)
            if notify:
                _outcome_queue("declare")
                rig.take_in(warm, notify=OUTCOMES)
                rig.relay(warm, notified=True)
            for _ in range(rounds):
                sample.bare.append(rig.bare(messages))
                intake_bare.append(rig.take_in_bare(messages))
                intake_rounds.append(rig.take_in(messages))
                relayed, overheads = rig.relay(messages)
                sample.relay.append(relayed)
                sample.overhead_ms.extend(overheads)
                if notify:
                    rig.take_in(messages, notify=OUTCOMES)
                    sample.notify.append(rig.relay(messages, notified=True)[0])
                    _outcome_queue("purge")
            samples.append(sample)
            if herd and herd_result is None:
                herd_result = rig.herd(herd, latency)
            rss.extend(size for size in (bench_proc.max_rss_mb(worker.pid),
                                         bench_proc.max_rss_mb(intake.pid)) if size)
            stack.processes.remove(next(p for p in stack.processes if p[1] is worker))
            _stop(worker)
    finally:
        pool.close()
        if notify:
            _outcome_queue("delete")
    by_latency = [s.summary() for s in samples]
    head = dict(by_latency[0])
    head.pop("latency_ms")
    head["cpu_ms_per_send"]["intake"] = median_cpu(intake_rounds)
    head["cpu_ms_per_send"]["intake_bare"] = median_cpu(intake_bare)
    head["cpu_ms_by_process"]["intake"] = median_parts(intake_rounds)
    head["cpu_ms_by_process"]["intake_bare"] = median_parts(intake_bare)
    intake_per_s = statistics.median(r.per_s for r in intake_rounds)
    intake_bare_per_s = statistics.median(r.per_s for r in intake_bare)
    result: dict[str, Any] = {
        **head, "intake_per_s": round(intake_per_s, 1),
        "intake_bare_per_s": round(intake_bare_per_s, 1),
        "intake_ratio": round(intake_per_s / intake_bare_per_s, 3),
        "herd_token_requests": herd_result[0] if herd_result else None,
        "herd_sends": herd_result[1] if herd_result else None,
        "worker_rss_mb": {"max": round(max(rss), 1) if rss else None},
        "cpu_counted": ["worker", *service_pids],
        "by_latency": by_latency,
    }
    result["targets"] = targets(result)
    return result


# Where the bench's outcome tasks go: a queue of its own that nobody consumes (purged after
# each round, deleted at the end).
OUTCOMES = {"task": "bench.mail_outcome", "queue": "bench.outcomes"}


def _outcome_queue(action: str) -> None:
    from kombu.entity import Queue

    from mailrelay.celery_app import app

    with app.connection_for_write() as connection:
        channel = connection.default_channel
        if action == "declare":  # as a producer's worker would (RabbitMQ refuses it otherwise)
            Queue(OUTCOMES["queue"], durable=True)(channel).declare()  # type: ignore[no-untyped-call]
        elif action == "purge":
            channel.queue_purge(OUTCOMES["queue"])
        else:
            channel.queue_delete(OUTCOMES["queue"])


def get_settings_broker() -> str:
    from mailrelay.config import get_settings

    return get_settings().broker_url


def _wait_ready(stack: Any, log_name: str, node: str) -> None:
    from mailrelay.celery_app import app

    stack.wait_until(log_name, lambda: bool(app.control.ping(destination=[node], timeout=0.5)),
                     60, "did not answer a ping")


def _stop(process: Any) -> None:
    import signal

    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(30)
    except Exception:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def _set_rollout(provider: str) -> None:
    from mailrelay.rollout import manage
    from mailrelay.store import rollouts

    if rollouts.get(provider) is None:
        manage.set_rollout(provider, manage.Changes(percent_bp=10_000), actor="bench",
                           reason="mailrelay bench --rollout")
