"""Real `celery worker` processes for integration tests, each in its own process group."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]


def terminate_group(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the process group, then SIGKILL it if it has not ended within ``timeout``."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


class Worker:
    def __init__(self, queues: str, *, concurrency: int = 4, pool: str = "prefork",
                 log_dir: Path, extra_env: dict[str, str] | None = None,
                 prefetch_multiplier: int = 1) -> None:
        self.name = f"test-{uuid.uuid4().hex[:8]}@localhost"
        self.log_path = log_dir / f"{self.name.split('@')[0]}.log"
        self.queues = queues
        argv = [sys.executable, "-m", "celery", "-A", "mailrelay.celery_app", "worker",
                "-Q", queues, "-P", pool, "-c", str(concurrency), "-n", self.name,
                "--prefetch-multiplier", str(prefetch_multiplier), "-E", "-l", "info", "--without-gossip",
                "--without-mingle"]
        env = {**os.environ, **(extra_env or {})}
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log()}")
            if b" ready." in self.log_path.read_bytes():
                return
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def children(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True)
        return [int(pid) for pid in out.stdout.split()]

    def stop(self, timeout: float = 20) -> None:
        terminate_group(self.process, timeout)
        with contextlib.suppress(ProcessLookupError):  # pool children that outlived their parent
            os.killpg(self.process.pid, signal.SIGKILL)
        self._log.close()


class Host:
    """`mailrelay worker --profile P` for each profile, standing in for one machine: node
    names ``P@NAME``, as `--hostname P@%h` gives on a host called NAME, and one process
    group for all of them (pool children included), so that SIGKILL to the group is the
    machine going away: no warm shutdown, nothing acked, every lease left to expire."""

    def __init__(self, name: str, profiles: dict[str, int], *, log_dir: Path,
                 env: dict[str, str]) -> None:
        self.name = name
        self.log_paths: list[Path] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        for profile, concurrency in profiles.items():
            log_path = log_dir / f"{profile}@{name}.log"
            # The first worker leads a new group (in this session, so that the others may
            # join it: setpgid only moves a process within its own session).
            group = self.processes[0].pid if self.processes else 0
            with log_path.open("wb") as log:
                self.processes.append(subprocess.Popen(
                    [sys.executable, "-m", "mailrelay.cli", "worker", "--profile", profile,
                     "--concurrency", str(concurrency), "--hostname", f"{profile}@{name}"],
                    cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                    process_group=group))
            self.log_paths.append(log_path)
        self.group = self.processes[0].pid

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        for process, log_path in zip(self.processes, self.log_paths, strict=True):
            while b" ready." not in log_path.read_bytes():
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{log_path.stem} not ready:\n{self.log()}")
                time.sleep(0.2)

    def log(self) -> str:
        return "\n".join(f"--- {path.stem}\n" + path.read_text(errors="replace")[-3000:]
                         for path in self.log_paths)

    def kill(self) -> None:
        """SIGKILL to the whole group at once, then reap the workers."""
        os.killpg(self.group, signal.SIGKILL)
        for process in self.processes:
            process.wait(10)

    def stop(self, timeout: float = 20) -> None:
        with contextlib.suppress(ProcessLookupError):  # killed already
            os.killpg(self.group, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(0.1, deadline - time.monotonic()))
        with contextlib.suppress(ProcessLookupError):  # whatever outlived the warm shutdown
            os.killpg(self.group, signal.SIGKILL)
        for process in self.processes:
            process.wait(10)


class Flower:
    """`mailrelay flower` as a child process in its own process group."""

    def __init__(self, port: int, workdir: Path, env: dict[str, str]) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = workdir / "flower.log"
        self._log = self.log_path.open("wb")
        # cwd: a directory of the test's own, so that no stray flowerconfig.py is read
        # and nothing is written into the repository.
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mailrelay.cli", "flower", "--port", str(port),
             "--address", "127.0.0.1"], cwd=workdir, env={**os.environ, **env},
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def wait_listening(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"flower exited early:\n{self.log()}")
            with contextlib.suppress(requests.ConnectionError):
                requests.get(f"{self.url}/healthcheck", timeout=2)
                return
            time.sleep(0.2)
        raise TimeoutError(f"flower not listening in {timeout}s:\n{self.log()}")

    def get(self, path: str, auth: tuple[str, str] | None = None, **params: Any) -> requests.Response:
        return requests.get(f"{self.url}{path}", auth=auth, params=params, timeout=10)

    def stop(self, timeout: float = 15) -> int:
        terminate_group(self.process, timeout)
        self._log.close()
        return int(self.process.returncode)
