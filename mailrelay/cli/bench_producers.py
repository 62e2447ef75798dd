"""Producer processes for the benchmark's intake rate: plain Celery, as a producer service.

Each producer is a process of its own (spawned, so it shares nothing with the bench) with
a Celery app that knows nothing of mailrelay but the broker's URL, publishing
``mailrelay.send`` exactly as the README tells producers to.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing.pool import Pool
from typing import Any

SEND_TASK = "mailrelay.send"
INTAKE_QUEUE = "mailrelay.intake"

_producer: Any = None


def message(sender: str, i: int) -> dict[str, Any]:
    """The benchmark's message: a text and an HTML part of about 1 kB each."""
    return {"from": sender, "to": [f"rcpt{i}@example.org"], "subject": f"bench {i}",
            "text": "Benchmark message body.\n" * 20, "html": "<p>Benchmark message body.</p>" * 20}


_intake: Any = None


def _connect(broker_url: str) -> None:
    global _producer, _intake
    from celery import Celery
    from kombu.entity import Queue

    _producer = Celery(broker=broker_url)
    _producer.conf.broker_transport_options = {"confirm_publish": True}  # as the README's
    # Published to, never declared: mailrelay declares it (a quorum queue on RabbitMQ).
    _intake = Queue(INTAKE_QUEUE, no_declare=True)  # type: ignore[no-untyped-call]  # kombu is unannotated
    _producer.connection_for_write().ensure_connection(max_retries=3)


def _publish(job: tuple[str, str, int, int, dict[str, str] | None]) -> int:
    task, sender, first, count, notify = job
    for i in range(first, first + count):
        body = message(sender, i)
        if notify:
            body["notify"] = notify
        _producer.send_task(task, queue=_intake, kwargs={"message": body})
    return count


class Producers:
    """A pool of producer processes, connected once; ``publish`` splits a batch among them."""

    def __init__(self, broker_url: str, processes: int) -> None:
        self.processes = processes
        context = multiprocessing.get_context("spawn")
        self._pool: Pool = context.Pool(processes, initializer=_connect, initargs=(broker_url,))

    def publish(self, sender: str, first: int, count: int, task: str = SEND_TASK,
                notify: dict[str, str] | None = None) -> None:
        """Publish ``count`` sends numbered from ``first`` (as ``task``: ``mailrelay.send``,
        or the bench's baseline), each with ``notify`` if given; returns when all are
        published."""
        share, extra = divmod(count, self.processes)
        jobs, start = [], first
        for n in range(self.processes):
            size = share + (1 if n < extra else 0)
            if size:
                jobs.append((task, sender, start, size, notify))
            start += size
        published = sum(self._pool.map(_publish, jobs, chunksize=1))
        if published != count:
            raise RuntimeError(f"producers published {published} of {count}")

    def close(self) -> None:
        self._pool.terminate()
        self._pool.join()
