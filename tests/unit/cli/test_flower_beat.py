"""`mailrelay flower` and `mailrelay beat`: the login check and what they hand to Celery."""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mailrelay import flower_config
from mailrelay.cli import cli
from mailrelay.cli.exits import CONFIG
from mailrelay.config import get_settings
from mailrelay.errors import ConfigError

PASSWORD = "s3cr3t-pw,with:colon"  # a comma and a colon: both legal in a password
AUTH = f"ops:{PASSWORD}"


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Stand in for the Celery app's `start`; record its argv and the FLOWER_* environment."""
    from mailrelay.celery_app import app

    calls: list[dict[str, Any]] = []

    def record(argv: list[str]) -> None:
        calls.append({"argv": list(argv),
                      "flower_env": {k: v for k, v in os.environ.items() if k.startswith("FLOWER_")}})

    monkeypatch.setattr(app, "start", record)
    return calls


# --- the login ------------------------------------------------------------------------------

@pytest.mark.parametrize("raw", ["ops:pw", AUTH, "ops:a b c", "ünï:çødé"])
def test_check_auth_accepts_user_colon_password(raw: str) -> None:
    assert flower_config.check_auth(raw) == raw


@pytest.mark.parametrize(("raw", "needle"), [
    ("", "is empty"),
    ("ops-without-colon-pw", "has no ':'"),
    (":lonely-password", "user part is empty"),
    ("ops:", "password part is empty"),
    ("ops:password\n", "control character"),
    ("ops:pass\x00word", "control character"),
])
def test_check_auth_refuses_with_a_reason_and_never_the_value(raw: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        flower_config.check_auth(raw)
    message = str(err.value)
    assert message.startswith("MAILRELAY_FLOWER_AUTH") and needle in message
    assert all(part not in message for part in raw.split(":") if len(part) > 3)


@pytest.mark.parametrize("raw", ["", "ops-without-colon-pw", "ops:"])
def test_flower_will_not_start_without_a_valid_login(
        raw: str, setenv: Callable[..., None], started: list[dict[str, Any]]) -> None:
    setenv(MAILRELAY_FLOWER_AUTH=raw)
    result = CliRunner().invoke(cli, ["flower"])
    assert result.exit_code == CONFIG == 78
    assert "MAILRELAY_FLOWER_AUTH" in result.output and "Flower not started" in result.output
    assert "without-colon-pw" not in result.output
    assert started == []


# --- what Flower is started with -------------------------------------------------------------

def test_flower_argv_holds_no_secret_and_no_flower_variable_is_set(
        setenv: Callable[..., None], started: list[dict[str, Any]]) -> None:
    setenv(MAILRELAY_FLOWER_AUTH=AUTH)
    result = CliRunner().invoke(cli, ["flower", "--port", "5601", "--address", "192.0.2.7"])
    assert result.exit_code == 0, result.output
    (call,) = started
    assert call["argv"] == ["flower", "--port=5601", "--address=192.0.2.7",
                            f"--conf={flower_config.PATH}"]
    assert PASSWORD not in " ".join(call["argv"]) and "ops" not in " ".join(call["argv"])
    assert call["flower_env"] == {}


def test_flower_defaults_to_the_configured_port_on_localhost(
        setenv: Callable[..., None], started: list[dict[str, Any]]) -> None:
    setenv(MAILRELAY_FLOWER_AUTH=AUTH, MAILRELAY_FLOWER_PORT="5602")
    assert CliRunner().invoke(cli, ["flower"]).exit_code == 0
    assert started[0]["argv"][1:3] == ["--port=5602", "--address=127.0.0.1"]


def test_flower_says_when_it_cannot_listen(setenv: Callable[..., None],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from mailrelay.celery_app import app

    def busy(argv: list[str]) -> None:
        raise OSError(errno.EADDRINUSE, "Address already in use")

    monkeypatch.setattr(app, "start", busy)
    setenv(MAILRELAY_FLOWER_AUTH=AUTH)
    result = CliRunner().invoke(cli, ["flower", "--port", "5604"])
    assert result.exit_code == 69
    assert "cannot listen on 127.0.0.1:5604: Address already in use" in result.output


@pytest.fixture
def flower_options() -> Iterator[Any]:
    """Flower's global tornado options (and the event filter the conf file installs), put
    back as they were afterwards."""
    from flower.events import EventsState
    from flower.options import default_options as options

    saved = {name: option._value for name, option in options._options.items()}
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    event = EventsState.__dict__["event"]
    yield options
    for name, option in options._options.items():
        option._value = saved[name]
    root.setLevel(level)
    root.handlers[:] = handlers
    EventsState.event = event
    if "_mailrelay_filtered" in EventsState.__dict__:
        delattr(EventsState, "_mailrelay_filtered")


def test_flower_reads_the_login_and_limits_from_the_conf_file(
        setenv: Callable[..., None], flower_options: Any) -> None:
    """Flower's own option parsing, given the argv `mailrelay flower` builds."""
    from flower.command import apply_options

    from mailrelay.cli.flower import flower_argv

    setenv(MAILRELAY_FLOWER_AUTH=AUTH, MAILRELAY_LOG_LEVEL="warning")
    apply_options("flower", flower_argv(5603, "127.0.0.1")[1:])
    options = flower_options
    assert options.basic_auth == [AUTH]  # one entry: the comma did not split it
    assert (options.port, options.address) == (5603, "127.0.0.1")
    assert options.max_tasks == flower_config.MAX_TASKS == 10_000
    assert options.max_workers == flower_config.MAX_WORKERS
    assert options.purge_offline_workers == flower_config.PURGE_OFFLINE_WORKERS_SECONDS
    assert options.read_only is True and options.persistent is False
    assert options.enable_events is True
    assert options.logging == "warning"
    assert {"args", "kwargs", "result"}.isdisjoint(options.tasks_columns.split(","))


def test_flower_keeps_no_arguments_from_producers(setenv: Callable[..., None],
                                                   flower_options: Any) -> None:
    """A task-sent event carries the producer's repr of the message; Flower's state must
    keep the worker's (redacted) view only."""
    from flower.command import apply_options
    from flower.events import EventsState

    content = "{'message': {'to': ['ada@example.org'], 'text': 'secret body'}}"
    common = {"uuid": "t-1", "hostname": "w@h", "clock": 1, "local_received": time.time()}
    sent = {"type": "task-sent", "name": "mailrelay.send", "args": "[]", "kwargs": content,
            "timestamp": time.time(), **common}
    unfiltered = EventsState(max_tasks_in_memory=10)
    unfiltered.event(dict(sent))
    assert unfiltered.tasks["t-1"].kwargs == content  # what Flower alone would show

    setenv(MAILRELAY_FLOWER_AUTH=AUTH)
    apply_options("flower", [f"--conf={flower_config.PATH}"])
    state = EventsState(max_tasks_in_memory=10)
    state.event(dict(sent))
    task = state.tasks["t-1"]
    assert task.name == "mailrelay.send" and task.state == "PENDING"
    assert task.kwargs is None and task.args is None
    state.event({"type": "task-received", "name": "mailrelay.send", "args": "()",
                 "kwargs": "{'message': '<redacted>'}", "timestamp": time.time(), **common})
    # A late task-sent (events from two processes) must not bring the content back either.
    state.event({"type": "task-sent", "name": "mailrelay.send", "args": "[]", "kwargs": content,
                 "timestamp": time.time() - 5, **common})
    assert state.tasks["t-1"].kwargs == "{'message': '<redacted>'}"
    assert state.tasks["t-1"].state == "RECEIVED"


def test_drop_producer_arguments_touches_task_sent_only() -> None:
    sent = {"type": "task-sent", "uuid": "u", "name": "n", "args": "[1]", "kwargs": "{}"}
    assert flower_config.drop_producer_arguments(sent) == {"type": "task-sent", "uuid": "u",
                                                           "name": "n"}
    received = {**sent, "type": "task-received"}
    assert flower_config.drop_producer_arguments(received) == received


def test_the_conf_file_refuses_a_bad_login_too(setenv: Callable[..., None],
                                               flower_options: Any) -> None:
    """`celery ... flower --conf=PATH` without `mailrelay flower`'s check in front."""
    from flower.command import apply_options

    setenv(MAILRELAY_FLOWER_AUTH="nocolon")
    with pytest.raises(ConfigError, match="MAILRELAY_FLOWER_AUTH"):
        apply_options("flower", [f"--conf={flower_config.PATH}"])
    assert not flower_options.basic_auth


def test_the_conf_module_names_only_real_flower_options(setenv: Callable[..., None]) -> None:
    """tornado ignores unknown names in a conf file, so a typo would silently drop a limit;
    and a helper named like an option would silently set it."""
    from flower.options import default_options as options

    known = set(options._options)
    setenv(MAILRELAY_FLOWER_AUTH=AUTH)
    published = flower_config.flower_options(get_settings())
    assert {name.replace("_", "-") for name in published} <= known
    assert {name.replace("_", "-") for name in vars(flower_config)} & known == set()


# --- beat ------------------------------------------------------------------------------------

def test_beat_argv_uses_the_schedule_file_and_log_level(
        tmp_path: Path, setenv: Callable[..., None], started: list[dict[str, Any]]) -> None:
    setenv(MAILRELAY_LOG_LEVEL="debug")
    target = tmp_path / "state" / "beat-schedule"
    result = CliRunner().invoke(cli, ["beat", "--schedule-file", str(target)])
    assert result.exit_code == 0, result.output
    assert started[0]["argv"] == ["beat", f"--schedule={target}", "--loglevel=debug"]
    assert target.parent.is_dir()


def test_beat_defaults_to_celerybeat_schedule_in_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setenv: Callable[..., None],
        started: list[dict[str, Any]]) -> None:
    monkeypatch.chdir(tmp_path)
    setenv(MAILRELAY_LOG_LEVEL="info")
    assert CliRunner().invoke(cli, ["beat"]).exit_code == 0
    assert started[0]["argv"] == ["beat", f"--schedule={tmp_path / 'celerybeat-schedule'}",
                                  "--loglevel=info"]


@pytest.mark.integration
def test_beat_starts_keeps_its_schedule_file_and_stops_on_sigterm(tmp_path: Path) -> None:
    target = tmp_path / "state" / "schedule"
    log = (tmp_path / "beat.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "mailrelay.cli", "beat", "--schedule-file",
                                str(target)], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while b"beat: Starting..." not in (tmp_path / "beat.log").read_bytes():
            assert process.poll() is None and time.monotonic() < deadline, \
                (tmp_path / "beat.log").read_text()
            time.sleep(0.1)
        assert list(target.parent.glob("schedule*"))  # shelve picks the suffixes
        # Let start-up finish (the schedule is opened and synced after "Starting..."): a
        # SIGTERM inside that step ends beat with 1 instead of 0.
        time.sleep(1.5)
        os.killpg(process.pid, signal.SIGTERM)
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        log.close()
    text = (tmp_path / "beat.log").read_text()
    assert f"db -> {target}" in text and "[stderr]@%INFO" in text


# --- --dry-run: the settings checked, the arguments shown, nothing started ----------------------

def test_flower_dry_run_prints_the_arguments_never_the_password_and_starts_nothing(
        setenv: Callable[..., None], started: list[dict[str, Any]]) -> None:
    setenv(MAILRELAY_FLOWER_AUTH=AUTH, MAILRELAY_FLOWER_PORT="5603")
    result = CliRunner().invoke(cli, ["flower", "--dry-run", "--loglevel", "debug"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == (
        "celery -A mailrelay.celery_app flower --port=5603 --address=127.0.0.1 "
        f"--conf={flower_config.PATH} --logging=debug")
    assert PASSWORD not in result.output and "ops" not in result.output
    assert started == []


@pytest.mark.parametrize("raw", ["", "ops-without-colon-pw"])
def test_flower_dry_run_refuses_a_missing_login_as_the_real_start(
        raw: str, setenv: Callable[..., None], started: list[dict[str, Any]]) -> None:
    setenv(MAILRELAY_FLOWER_AUTH=raw)
    dry = CliRunner().invoke(cli, ["flower", "--dry-run"])
    real = CliRunner().invoke(cli, ["flower"])
    assert dry.exit_code == real.exit_code == CONFIG
    assert dry.output == real.output and "without-colon-pw" not in dry.output
    assert started == []


def test_beat_dry_run_prints_the_arguments_and_schedule_and_creates_nothing(
        tmp_path: Path, setenv: Callable[..., None], started: list[dict[str, Any]]) -> None:
    setenv(MAILRELAY_LOG_LEVEL="warning")
    target = tmp_path / "state" / "beat-schedule"
    result = CliRunner().invoke(cli, ["beat", "--schedule-file", str(target), "--dry-run"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == (f"celery -A mailrelay.celery_app beat --schedule={target} "
                        "--loglevel=warning")
    assert "  reconcile-outbox: mailrelay.reconcile every 15.0 s" in lines
    assert started == [] and not target.parent.exists()


@pytest.mark.parametrize("case", ["schedule directory is a file", "bad setting"])
def test_beat_dry_run_fails_as_the_real_start(
        case: str, tmp_path: Path, setenv: Callable[..., None],
        started: list[dict[str, Any]]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    target = tmp_path / "state" / "schedule"
    if case == "bad setting":
        setenv(MAILRELAY_METRICS_PORT="not-a-port")
    else:
        target = blocker / "schedule"
    dry = CliRunner().invoke(cli, ["beat", "--schedule-file", str(target), "--dry-run"])
    assert not (tmp_path / "state").exists()
    real = CliRunner().invoke(cli, ["beat", "--schedule-file", str(target)])
    if case == "bad setting":  # a ConfigError: the one edge (run_guarded) makes it 78
        assert type(dry.exception) is type(real.exception) is ConfigError
        assert str(dry.exception) == str(real.exception)
    else:
        assert dry.exit_code == real.exit_code == 73, (dry.output, real.output)
        assert "cannot create the directory of --schedule-file" in dry.output
    assert started == []


# --- help ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("command", "needles"), [
    ("flower", ["--port", "--address", "MAILRELAY_FLOWER_AUTH", "read-only"]),
    ("beat", ["--schedule-file", "celerybeat-schedule", "MAILRELAY_LOG_LEVEL"]),
])
def test_help(command: str, needles: list[str]) -> None:
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert all(needle in text for needle in needles), result.output
