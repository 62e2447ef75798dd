"""Child processes for the demo and the benchmark: a private Redis when none answers,
and mailrelay workers, each in its own process group so that stopping leaves nothing."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis


def emulator_env(url: str, bundle: str) -> dict[str, str]:
    """The settings that send mailrelay to the emulator instead of Google and Microsoft."""
    return {"REQUESTS_CA_BUNDLE": bundle, "MAILRELAY_GMAIL_API_URL": url,
            "MAILRELAY_GOOGLE_TOKEN_URL": f"{url}/token",
            "MAILRELAY_GOOGLE_AUTH_URL": f"{url}/o/oauth2/v2/auth",
            "MAILRELAY_GRAPH_API_URL": f"{url}/v1.0", "MAILRELAY_MS_AUTHORITY_HOST": url}


def emulator_account(emulator: Any, provider: str, address: str, *, client_id: str,
                     client_secret: str, tenant: str | None = None) -> None:
    """Register ``address`` with a fresh grant from the emulator, which forgets grants when
    it restarts: a new account, or new secrets for an existing one."""
    from mailrelay.auth import accounts
    from mailrelay.auth.credentials import forget

    refresh = emulator.connect(provider, client_id, client_secret, address, tenant)
    if address in {a["address"] for a in accounts.list_all()}:
        accounts.replace_secrets(address, client_secret=client_secret, refresh_token=refresh)
    else:
        accounts.add(provider, address, client_id=client_id, tenant=tenant,
                     client_secret=client_secret, refresh_token=refresh)
    forget()


class StackError(RuntimeError):
    """A child process could not be started or did not come up."""


def redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Stack:
    """The processes started so far; ``stop`` ends them all, newest first."""

    workdir: Path
    processes: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    # Where each log stood when its process started: earlier runs' lines are not this run's.
    log_offsets: dict[str, int] = field(default_factory=dict)

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        path = self.workdir / f"{name}.log"
        self.log_offsets[name] = path.stat().st_size if path.exists() else 0
        log = path.open("ab")
        process = subprocess.Popen(argv, env={**os.environ, **(env or {})}, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True,
                                   cwd=self.workdir)
        self.processes.append((name, process))
        return process

    def start_redis(self) -> str:
        """Start a private redis-server on a free port (nothing kept on disk); return its URL."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise StackError("no Redis answers and redis-server is not installed; "
                               "install it (Debian: apt-get install redis-server) or set "
                               "MAILRELAY_REDIS_URL and MAILRELAY_BROKER_URL")
        port = free_port()
        self.start("redis", [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(self.workdir.resolve())])
        url = f"redis://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while not redis_answers(url):
            if time.monotonic() > deadline:
                raise StackError("the private redis-server did not start; see redis.log")
            time.sleep(0.1)
        return url

    def start_worker(self, profile: str, env: dict[str, str] | None = None,
                     concurrency: int | None = None) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "mailrelay.cli", "worker", "--profile", profile]
        if concurrency:
            argv += ["--concurrency", str(concurrency)]
        return self.start(f"worker-{profile}", argv, env)

    def start_emulator(self) -> tuple[str, str]:
        """Start `mailrelay emulator` on a free port; return its URL and CA bundle path."""
        self.start("emulator", [sys.executable, "-m", "mailrelay.cli", "emulator", "--port",
                                str(free_port()), "--state-dir", str((self.workdir / "emulator").resolve())])
        self.wait_log("emulator", "bundle:", timeout=30)
        found: dict[str, str] = {}
        with (self.workdir / "emulator.log").open("rb") as handle:
            handle.seek(self.log_offsets["emulator"])
            for line in handle.read().decode(errors="replace").splitlines():
                name, sep, value = line.partition(": ")
                if sep and name in ("emulator", "bundle"):
                    found.setdefault(name, value.strip())
        return found["emulator"], found["bundle"]

    def wait_log(self, name: str, needle: str, timeout: float = 60) -> None:
        """Wait until the process's log says ``needle`` (in what it wrote since it started)."""
        path = self.workdir / f"{name}.log"
        start = self.log_offsets.get(name, 0)
        self.wait_until(name, lambda: path.exists() and needle in path.read_bytes()[start:].decode(
            errors="replace"), timeout, f"did not say {needle!r}")

    def wait_until(self, name: str, ready: Callable[[], bool], timeout: float, missing: str) -> None:
        """Wait until ``ready()``, failing at once if the process ``name`` exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            for proc_name, process in self.processes:
                if proc_name == name and process.poll() is not None:
                    raise StackError(f"{name} exited; see {self.workdir / (name + '.log')}")
            time.sleep(0.1)
        raise StackError(f"{name} {missing} in {timeout}s; see {self.workdir / (name + '.log')}")

    def stop(self) -> None:
        for _name, process in reversed(self.processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for _name, process in reversed(self.processes):
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):  # pool children outliving the parent
                os.killpg(process.pid, signal.SIGKILL)
        self.processes.clear()
