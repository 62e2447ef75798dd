from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.processes import Worker

pytestmark = pytest.mark.integration


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []

    def start(queues: str, **kwargs: object) -> Worker:
        worker = Worker(queues, log_dir=tmp_path, **kwargs)  # type: ignore[arg-type]
        started.append(worker)
        worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.stop()
