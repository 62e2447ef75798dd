"""Every command of `mailrelay --help` that touches a service, against each failure of its
services, as a real process: no traceback, the documented exit code, one line naming
the service, and no message lost or duplicated.

The failures are real: a closed local port (refused at once), a login the server
refuses, a database without the schema, a key that is not the one the secrets were
stored with, a file or directory that is not there, a port someone else listens on.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from cryptography.fernet import Fernet

from mailrelay.cli import cli
from mailrelay.cli.exits import MEANINGS
from tests import services
from tests.integration.helpers import query

pytestmark = pytest.mark.integration

PASSWORD = "hunter2-do-not-print"
SINK, SPARE, GMAIL, NEW = "sender@example.com", "spare@example.com", "g@example.com", "n@example.com"
TIMEOUT = 60  # a generous bound; a closed local port fails in milliseconds


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class Failure:
    """What goes wrong: settings to change, the exit code it must give, and words the
    one line must hold ({closed}, {taken} are filled in)."""

    env: dict[str, str]
    code: int
    says: tuple[str, ...]


CLOSED = _free_port()  # nothing listens here for the session: every connection is refused
FAILURES: dict[str, Failure] = {
    "db-closed": Failure({"MAILRELAY_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{CLOSED}/mailrelay"},
                         69, ("database unavailable", f"127.0.0.1:{CLOSED}")),
    "db-login": Failure({"MAILRELAY_DATABASE_URL":
                         f"postgresql://mailrelay_nobody:{PASSWORD}@127.0.0.1:5432/{{db}}"},
                        69, ("refused the login", "127.0.0.1:5432")),
    "db-empty": Failure({"MAILRELAY_DATABASE_URL": "{empty}"}, 78, ("mailrelay db upgrade",)),
    "sqlite-no-dir": Failure({"MAILRELAY_DATABASE_URL": "sqlite:///{tmp}/missing/outbox.db"},
                             73, ("does not exist", "MAILRELAY_DATABASE_URL")),
    "broker-closed": Failure({"MAILRELAY_BROKER_URL": f"redis://127.0.0.1:{CLOSED}/0"},
                             69, ("broker unavailable", f"127.0.0.1:{CLOSED}")),
    "redis-closed": Failure({"MAILRELAY_REDIS_URL": f"redis://127.0.0.1:{CLOSED}/2"},
                            69, ("Redis unavailable", f"127.0.0.1:{CLOSED}")),
    "redis-login": Failure({"MAILRELAY_REDIS_URL": "{redis_login}"}, 69, ("Redis", "refused the login")),
    "wrong-key": Failure({"MAILRELAY_SECRET_KEY": Fernet.generate_key().decode()},
                         78, ("MAILRELAY_SECRET_KEY", "rotate-key")),
    "missing-file": Failure({}, 66, ("{tmp}/absent.json",)),
    "no-dir": Failure({}, 73, ("/proc/mailrelay-nowhere",)),
    "port-taken": Failure({"MAILRELAY_METRICS_PORT": "{taken}"}, 69, ("listen", ":{taken}")),
    "emulator-closed": Failure({}, 69, ("emulator unavailable", f"127.0.0.1:{CLOSED}")),
}
DATABASE = ("db-closed", "db-login", "db-empty", "sqlite-no-dir")

# Each command that touches a service, how to run it, and the failures of its services.
SEND = ("send", "--from", SINK, "--to", "ada@example.org", "--text", "t", "--idempotency-key", "k1")
COMMANDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "send": (SEND, (*DATABASE, "broker-closed")),
    "send --file": (("send", "--file", "{tmp}/absent.json"), ("missing-file",)),
    "status": (("status", "{queued}"), DATABASE),
    "failed": (("failed",), DATABASE),
    "rejected": (("rejected",), DATABASE),
    "replay": (("replay", "{failed}", "--reason", "r", "--yes"), (*DATABASE, "broker-closed")),
    "accounts list": (("accounts", "list"), DATABASE),
    "accounts add": (("accounts", "add", "gmail", NEW, "--client-id", "c"),
                     (*DATABASE, "redis-closed", "redis-login", "wrong-key")),
    "accounts check": (("accounts", "check", GMAIL), (*DATABASE, "redis-closed", "redis-login",
                                                      "wrong-key")),
    "accounts set": (("accounts", "set", SINK, "--rate-limit", "5"), DATABASE),
    "accounts remove": (("accounts", "remove", SPARE), (*DATABASE, "redis-closed")),
    "accounts rotate-key": (("accounts", "rotate-key"), (*DATABASE, "wrong-key")),
    "auth connect": (("auth", "connect", "gmail", NEW, "--client-id", "c", "--no-browser",
                      "--timeout", "5"), (*DATABASE, "redis-closed", "wrong-key")),
    "auth reconnect": (("auth", "reconnect", GMAIL, "--no-browser", "--timeout", "5"),
                       (*DATABASE, "redis-closed", "wrong-key")),
    "db upgrade": (("db", "upgrade"), ("db-closed", "db-login", "sqlite-no-dir")),
    "db current": (("db", "current"), ("db-closed", "db-login", "sqlite-no-dir")),
    "db stats": (("db", "stats"), DATABASE),
    "db purge": (("db", "purge"), DATABASE),
    "db purge --dry-run": (("db", "purge", "--dry-run"), DATABASE),
    "worker": (("worker", "--profile", "sink"), (*DATABASE, "broker-closed", "wrong-key",
                                                 "port-taken")),
    "beat": (("beat", "--schedule-file", "{tmp}/beat/schedule"), ("broker-closed",)),
    "beat --schedule-file": (("beat", "--schedule-file", "/proc/mailrelay-nowhere/schedule"),
                             ("no-dir",)),
    "flower": (("flower", "--port", "{free}"), ("broker-closed",)),
    "flower --port": (("flower", "--port", "{taken}"), ("port-taken",)),
    "emulator": (("emulator", "--port", "{taken}"), ("port-taken",)),
    "emulator inject": (("emulator", "inject", "--url", f"https://127.0.0.1:{CLOSED}", "--endpoint",
                         "gmail.send", "--status", "500"), ("emulator-closed",)),
    "emulator reset": (("emulator", "reset", "--url", f"https://127.0.0.1:{CLOSED}"),
                       ("emulator-closed",)),
    "emulator stats": (("emulator", "stats", "--url", f"https://127.0.0.1:{CLOSED}"),
                       ("emulator-closed",)),
    "emulator stats --ca": (("emulator", "stats", "--url", f"https://127.0.0.1:{CLOSED}", "--ca",
                             "{tmp}/absent.json"), ("missing-file",)),
    "scenarios run": (("scenarios", "run", "backlog", "--stack", "{tmp}/absent.json"),
                      ("missing-file",)),
    "drill run": (("drill", "run", "revoked-grant", "--stack", "{tmp}/absent.json"),
                  ("missing-file",)),
    "queues list": (("queues", "list"), ("broker-closed", "redis-closed")),
    "queues pause": (("queues", "pause", "sink", "--reason", "r"), ("broker-closed",)),
    "queues resume": (("queues", "resume", "sink"), ("redis-closed", "redis-login")),
    "reconcile": (("reconcile",), (*DATABASE, "broker-closed")),
    "reconcile --dry-run": (("reconcile", "--dry-run"), DATABASE),
}
# Commands that touch no service of the installation, or bring their own.
EXEMPT = {
    "accounts genkey": "prints a new key; touches nothing",
    "demo": "starts its own SQLite outbox, Redis (if none answers), emulator and workers",
    "bench": "starts its own outbox (or takes --database-url), emulator and workers for the run",
    "scenarios list": "prints the catalogue; touches nothing",
    "drill list": "prints the catalogue; touches nothing",
    # Their RabbitMQ failures are the broker's, as for `queues list` (test_rabbitmq.py).
    "queues dead": "on Redis (these runs' broker) there is no dead-letter queue to read",
    "queues requeue-dead": "on Redis (these runs' broker) there is no dead-letter queue to read",
}
CASES = [(name, failure) for name, (_, failures) in COMMANDS.items() for failure in failures]


def _leaf_commands(group: click.Group, prefix: str = "") -> Iterator[tuple[str, click.Command]]:
    for name, command in group.commands.items():
        path = f"{prefix}{name}"
        if isinstance(command, click.Group):
            if command.invoke_without_command:
                yield path, command
            yield from _leaf_commands(command, f"{path} ")
        else:
            yield path, command


def _classified(path: str) -> bool:
    return path in EXEMPT or any(name.split(" --")[0] == path for name in COMMANDS)


UNCLASSIFIED = [path for path, _ in _leaf_commands(cli) if not _classified(path)]


@dataclass
class World:
    tmp: Path
    values: dict[str, str]

    def fill(self, text: str) -> str:
        return text.format(**self.values)


@pytest.fixture(scope="module")
def empty_database() -> Iterator[str]:
    name = services.create_database()
    yield services.pg_url(name)
    services.drop_database(name)


@pytest.fixture
def world(sink_account: str, clean_redis: None, secret_key: str, empty_database: str,
          tmp_path: Path) -> Iterator[World]:
    from mailrelay import client
    from mailrelay.auth import accounts
    from mailrelay.store import outbox
    from mailrelay.store.outbox import Outcome
    from mailrelay.store.states import State

    accounts.add("sink", SPARE)
    accounts.add("gmail", GMAIL, client_id="c", client_secret="s", refresh_token="r")
    queued = client.submit({"from": SINK, "to": ["a@example.org"], "text": "q"}).message_id
    failed = client.submit({"from": SINK, "to": ["b@example.org"], "text": "f"}).message_id
    claim = outbox.claim(failed, worker="w", lease_seconds=60)
    assert claim is not None
    outbox.finish(claim, Outcome(State.FAILED, code="provider_rejected"), latency_ms=1)
    taken = socket.socket()
    taken.bind(("0.0.0.0", 0))  # noqa: S104  # where a worker's metrics server would listen
    taken.listen()
    redis_login = (services.REDIS_HOST.replace("redis://", f"redis://nobody:{PASSWORD}@")
                   + f"/{services.REDIS_DBS['MAILRELAY_REDIS_URL']}")
    values = {"tmp": str(tmp_path), "queued": queued, "failed": failed,
              "taken": str(taken.getsockname()[1]), "free": str(_free_port()),
              "empty": empty_database, "redis_login": redis_login,
              "db": os.environ["MAILRELAY_DATABASE_URL"].rsplit("/", 1)[1]}
    try:
        yield World(tmp_path, values)
    finally:
        taken.close()


def snapshot() -> dict[str, str]:
    return {row.id: row.state for row in query("SELECT id, state FROM messages")}


def accounts() -> set[tuple[str, str]]:
    return {(row.address, row.state) for row in query("SELECT address, state FROM accounts")}


def mailrelay(world: World, argv: tuple[str, ...], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "MAILRELAY_CLIENT_SECRET": "s", "MAILRELAY_REFRESH_TOKEN": "r",
            "MAILRELAY_FLOWER_AUTH": "ops:pw", **{k: world.fill(v) for k, v in env.items()}}
    return subprocess.run([sys.executable, "-m", "mailrelay.cli", *map(world.fill, argv)],
                          capture_output=True, text=True, timeout=TIMEOUT, env=full,
                          stdin=subprocess.DEVNULL, cwd=world.tmp)


@pytest.mark.parametrize(("command", "failure"), CASES, ids=[f"{c}: {f}" for c, f in CASES])
def test_a_failure_is_one_line_with_its_exit_code(world: World, command: str, failure: str) -> None:
    argv, _ = COMMANDS[command]
    expected = FAILURES[failure]
    before, registered = snapshot(), accounts()
    done = mailrelay(world, argv, expected.env)

    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mailrelay: "), done.stderr
    assert done.returncode == expected.code, done.stderr
    for words in expected.says:
        assert world.fill(words) in lines[0], lines[0]
    assert PASSWORD not in done.stderr + done.stdout

    after = snapshot()
    if (command, failure) == ("send", "broker-closed"):
        # Stored once, queued, and its id printed for the reconciler to send and the user to follow.
        new = set(after) - set(before)
        assert new == {done.stdout.strip()} and after[done.stdout.strip()] == "queued"
        assert "reconciler" in lines[0] and done.stdout.strip() in lines[0]
        assert {k: v for k, v in after.items() if k not in new} == before
    elif (command, failure) == ("replay", "broker-closed"):
        assert after == {**before, world.values["failed"]: "queued"}
        assert "reconciler" in lines[0]
    else:
        assert after == before
    assert accounts() == registered  # nothing half done either


def test_after_the_broker_outage_a_repeated_send_is_the_same_message(world: World) -> None:
    down = mailrelay(world, SEND, FAILURES["broker-closed"].env)
    assert down.returncode == 69
    again = mailrelay(world, (*SEND, "--json"), {})
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["id"] == down.stdout.strip()
    assert list(snapshot().values()).count("queued") == 2  # the fixture's and this one


def test_the_matrix_and_the_exemptions_name_real_commands() -> None:
    """(A command in neither is held to the edge by the test below.)"""
    listed = {path for path, _ in _leaf_commands(cli)}
    assert set(EXEMPT) <= listed
    assert {name.split(" --")[0] for name in COMMANDS} <= listed
    assert all(code in MEANINGS for f in FAILURES.values() for code in [f.code])


def _auto_argv(path: str, command: click.Command) -> list[str]:
    """Arguments click will accept, made up: enough to reach the services."""
    argv = path.split()
    for param in command.params:
        if not param.required:
            continue
        value = param.type.choices[0] if isinstance(param.type, click.Choice) else "x"
        argv += [str(value)] if isinstance(param, click.Argument) else [param.opts[0], str(value)]
    return argv


@pytest.mark.parametrize("path", UNCLASSIFIED)
@pytest.mark.parametrize("failure", ["db-closed", "broker-closed"])
def test_commands_not_in_the_matrix_yet_still_fail_in_one_line(world: World, path: str,
                                                               failure: str) -> None:
    """A command added without a row above is still held to the edge: no traceback, a
    documented code, and one `mailrelay:` line if it fails."""
    command = dict(_leaf_commands(cli))[path]
    done = mailrelay(world, tuple(_auto_argv(path, command)), FAILURES[failure].env)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode in MEANINGS, done.stderr
    if done.returncode != 0:
        assert done.stderr.splitlines()[-1].startswith("mailrelay: "), done.stderr


def test_the_client_says_a_stored_message_was_not_enqueued(world: World) -> None:
    """mailrelay.client.submit, as a producer's process calls it with the broker away."""
    script = ("from mailrelay.client import NotEnqueued, submit\n"
              "try:\n"
              f"    submit({{'from': '{SINK}', 'to': ['a@example.org'], 'text': 't'}})\n"
              "except NotEnqueued as err:\n"
              "    print(err.result.message_id, err.result.state, type(err.__cause__).__name__)\n")
    env = {**os.environ, **FAILURES["broker-closed"].env}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=TIMEOUT, env=env)
    message_id, state, cause = done.stdout.split()
    assert (state, cause) == ("queued", "OperationalError"), done.stderr
    assert snapshot()[message_id] == "queued"
