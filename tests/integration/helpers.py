from __future__ import annotations

import collections
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import text

from mailrelay.store.db import get_engine
from tests.processes import ROOT, terminate_group

if TYPE_CHECKING:
    from tests.integration.conftest import EmulatorHandle


def query(sql: str, **params: Any) -> list[Any]:
    with get_engine().connect() as conn:
        return list(conn.execute(text(sql), params).all())


def scalar(sql: str, **params: Any) -> Any:
    with get_engine().connect() as conn:
        return conn.execute(text(sql), params).scalar()


PRODUCER = Path(__file__).with_name("producer.py")


def produce_externally(message: dict[str, Any]) -> str:
    """Publish like a service that does not install mailrelay: plain `send_task`, whose
    headers carry repr(kwargs), the whole message; the worker must redact it."""
    (task_id,) = produce_many([message])
    return task_id


def produce_many(messages: list[dict[str, Any]], timeout: float = 60) -> list[str]:
    """``mailrelay.send`` for each message from a producer process that does not import
    mailrelay; the task ids, in order."""
    out = subprocess.run([sys.executable, str(PRODUCER), os.environ["MAILRELAY_BROKER_URL"]],
                         input=json.dumps(messages), capture_output=True, text=True,
                         timeout=timeout, check=True,
                         env={k: v for k, v in os.environ.items() if not k.startswith("MAILRELAY_")})
    ids = [str(task_id) for task_id in json.loads(out.stdout)]
    assert len(ids) == len(messages)
    return ids


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def final(message_id: str, timeout: float = 90) -> dict[str, Any]:
    """The message's status once it is sent or failed."""
    from mailrelay.store import outbox

    wait_for(lambda: (outbox.status(message_id) or {}).get("state") in ("sent", "failed"), timeout,
             f"message {message_id} to finish")
    info = outbox.status(message_id)
    assert info is not None
    return info


class Outage:
    """A TCP proxy in front of PostgreSQL that can be cut: the database "unreachable" for
    the workers that connect through it, while this test process keeps its own access.
    ``up(answer=False)`` makes it a database that hangs: connections are accepted and
    never answered, so a client waits for its connect timeout."""

    def __init__(self, target_port: int) -> None:
        from mailrelay.devstack import free_port

        self.port = free_port()
        self.target = ("127.0.0.1", target_port)
        self._open: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._answer = True
        self._lock = threading.Lock()

    def up(self, *, answer: bool = True) -> None:
        listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        self._listener, self._answer = listener, answer
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        """Refuse new connections and cut the open ones."""
        with self._lock:
            if self._listener is not None:
                # shutdown wakes the thread blocked in accept(); close alone would not.
                with contextlib.suppress(OSError):
                    self._listener.shutdown(socket.SHUT_RDWR)
                self._listener.close()
                self._listener = None
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by down()
            with self._lock:
                if self._listener is not listener:  # cut while this one was arriving
                    client.close()
                    return
                if not self._answer:
                    self._open.append(client)
                    continue
                server = socket.create_connection(self.target)
                self._open += [client, server]
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


RECONCILE_LOOP = """
import sys, time
from mailrelay.tasks.control import reconcile_all
while True:
    time.sleep(float(sys.argv[1]))
    try:
        reconcile_all()
    except Exception as err:  # Redis may be down for a moment: the next round tries again
        print("reconcile failed:", type(err).__name__, flush=True)
"""


class Reconciler:
    """The reconciler every ``every`` seconds in a process of its own, as beat runs it
    every 15 s (the same functions, on a shorter period): stranded messages re-enqueued,
    due outcome notifications published."""

    def __init__(self, every: float = 2.0, env: dict[str, str] | None = None) -> None:
        self.argv = [sys.executable, "-c", RECONCILE_LOOP, str(every)]
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Reconciler:
        self.process = subprocess.Popen(self.argv, env=self.env, cwd=ROOT, start_new_session=True,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        terminate_group(self.process, 10)


def assert_each_received_once(emulator: EmulatorHandle, ids: list[str], mailbox: str) -> None:
    """Every sent message of the outbox (as many as ``ids``) reached ``mailbox`` exactly
    once, by its Message-ID, and nothing else did."""
    expected = {row[0] for row in query("SELECT rfc822_message_id FROM messages WHERE state = 'sent'")}
    assert len(expected) == len(ids)
    received = collections.Counter(m["message_id"] for m in emulator.client.messages(mailbox=mailbox))
    duplicates = {mid: n for mid, n in received.items() if n > 1}
    assert not duplicates, f"received more than once: {duplicates}"
    assert set(received) == expected
