"""No message content anywhere an operator looks: Flower's pages and API, `celery inspect`,
worker logs, `mailrelay failed/status/accounts list`, metrics.

Messages carry one marker in every place content can be (addresses, display names,
subject, bodies, attachment name, a header). Some are delivered, some refused by the
provider with a text naming the recipient, and some are kept waiting on the intake worker:
its database refuses connections (so `mailrelay.send` retries, scheduled by countdown),
then hangs (so one send is active and the next reserved); a worker whose database has no
tables then fails them ("Task ... raised unexpected"). Everything is read on the way.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner

from mailrelay.celery_app import INTAKE_QUEUE, SEND_TASK, app
from mailrelay.cli import cli
from mailrelay.client import send_async, submit
from mailrelay.devstack import free_port
from tests import services
from tests.integration.conftest import EmulatorHandle
from tests.integration.helpers import Outage, final, produce_externally, query, wait_for
from tests.processes import ROOT, Flower, Worker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TASK_STATES = ("active", "reserved", "scheduled")


def content(sender: str, tag: str, to: str | None = None) -> dict[str, Any]:
    """A message with ``tag`` in every field that holds content."""
    pdf = base64.b64encode(f"%PDF-1.4 {tag}".encode()).decode()
    return {
        "from": sender, "to": [f"Ada {tag} <{to or f'ada-{tag}@example.org'}>"],
        "cc": [f"cc-{tag}@example.org"], "bcc": [f"bcc-{tag}@example.org"],
        "reply_to": f"reply-{tag}@example.org", "subject": f"Quarterly {tag}",
        "text": f"Body text {tag}", "html": f"<p>Body html {tag}</p>",
        "attachments": [{"filename": f"report-{tag}.pdf", "content_type": "application/pdf",
                         "content": pdf}],
        "headers": {"X-Ref": f"ref-{tag}"},
    }


class Seen:
    """Every text read, by where it was read, for one search at the end."""

    def __init__(self) -> None:
        self.texts: dict[str, str] = {}

    def add(self, where: str, text: str) -> str:
        self.texts[where] = text
        return text

    def leaks(self, tag: str) -> list[str]:
        return sorted(where for where, text in self.texts.items() if tag in text)


def inspect_once(worker: str, seen: Seen) -> dict[str, set[str]]:
    """The worker's active, reserved and scheduled task ids, each reply kept in ``seen``."""
    inspector = app.control.inspect(destination=[worker], timeout=3, limit=1)
    found: dict[str, set[str]] = {}
    for state in TASK_STATES:
        reply = getattr(inspector, state)() or {}
        seen.add(f"inspect {state} #{len(seen.texts)}", json.dumps(reply, default=str))
        entries = reply.get(worker, [])
        found[state] = {(e.get("request") or e)["id"] for e in entries}
    return found


def poll_inspect(worker: str, seen: Seen, done: Callable[[dict[str, set[str]]], bool],
                 timeout: float, what: str) -> dict[str, set[str]]:
    """Inspect until ``done`` holds for the ids seen in each state over all rounds."""
    union: dict[str, set[str]] = {state: set() for state in TASK_STATES}
    deadline = time.monotonic() + timeout
    while True:
        for state, ids in inspect_once(worker, seen).items():
            union[state] |= ids
        if done(union):
            return union
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}: {union}")
        time.sleep(0.3)


def celery_inspect(worker: str, commands: Iterable[list[str]], seen: Seen) -> str:
    """`celery inspect COMMAND -d WORKER --json` for each command at once; all outputs."""
    runs = {" ".join(cmd): subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "mailrelay.celery_app", "inspect", *cmd,
         "-d", worker, "-t", "3", "--json"], cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True) for cmd in commands}
    outputs = []
    for name, run in runs.items():
        out, _ = run.communicate(timeout=60)
        assert run.returncode == 0, out
        outputs.append(seen.add(f"celery inspect {name}", out))
    return "\n".join(outputs)


class FlowerReader:
    """Reads Flower's pages and API answers with the login, each kept in ``seen``."""

    def __init__(self, flower: Flower, login: tuple[str, str], seen: Seen) -> None:
        self.flower, self.login, self.seen = flower, login, seen

    def get(self, path: str, **params: Any) -> requests.Response:
        response = self.flower.get(path, self.login, **params)
        assert response.status_code == 200, (path, response.status_code)
        self.seen.add(f"flower {path} {params or ''}", response.text)
        return response

    def worker(self, name: str) -> dict[str, Any]:
        """The worker's page and API answer: both inspect it (active, reserved, scheduled)."""
        self.get(f"/worker/{name}")
        return dict(self.get("/api/workers", workername=name, refresh=1).json()[name])

    def everything(self) -> dict[str, Any]:
        """Every other page and answer that shows tasks or workers; the task list."""
        for path in ("/", "/workers", "/tasks", "/broker", "/api/task/types",
                     "/api/queues/length", "/metrics", "/api/workers"):
            self.get(path)
        self.get("/api/workers", refresh=1)
        self.get("/tasks/datatable", draw=1, start=0, length=1000, **{
            "order[0][column]": 0, "order[0][dir]": "desc", "columns[0][data]": "received",
            "search[value]": ""})
        tasks: dict[str, Any] = self.get("/api/tasks").json()
        for task_id in tasks:
            self.get(f"/task/{task_id}")
            self.get(f"/api/task/info/{task_id}")
            self.get(f"/api/task/result/{task_id}")
        return tasks


def run_cli(seen: Seen, *args: str, exit_code: int = 0) -> Any:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == exit_code, result.output
    seen.add("mailrelay " + " ".join(args), result.output)
    return json.loads(result.output) if "--json" in args else result.output


@pytest.fixture
def unmigrated_database() -> Iterator[str]:
    """A database without mailrelay's tables, as before `mailrelay db upgrade`."""
    name = services.create_database()
    yield services.pg_url(name)
    services.drop_database(name)


def scrape(port: int, seen: Seen, name: str) -> None:
    seen.add(f"{name} worker /metrics", requests.get(f"http://127.0.0.1:{port}/metrics",
                                                     timeout=10).text)


def deliver_and_refuse(tag: str, senders: dict[str, str], emulator: EmulatorHandle) -> list[str]:
    """Two messages delivered, and two refused by the providers with a text that names the
    recipient; the refused ones' ids."""
    bad = {"gmail": f"nobody-{tag}@mailbox.invalid", "microsoft": f"nobody-{tag}@contoso.invalid"}
    sent = [submit(content(sender, tag)).message_id for sender in senders.values()]
    refused = [submit(content(sender, tag, to=bad[provider])).message_id
               for provider, sender in senders.items()]
    assert [final(mid)["state"] for mid in sent] == ["sent", "sent"]
    outcomes = [final(mid) for mid in refused]
    assert [(r["state"], r["error_code"]) for r in outcomes] == [("failed", "invalid_recipient")] * 2
    # The content really went out, markers and all.
    delivered = emulator.client.messages(mailbox=f"ada-{tag}@example.org")
    assert len(delivered) == 2 and all(tag in m["subject"] for m in delivered)
    return refused


def read_cli(seen: Seen, refused: list[str], senders: dict[str, str]) -> None:
    """On-call's commands, for every message; the refused ones' details are the providers'
    texts without the addresses they named."""
    failed = run_cli(seen, "failed", "--json")
    assert {row["id"] for row in failed} == set(refused)
    details = sorted(row["error_detail"] for row in failed)
    assert "Invalid To header" in details[0] and "isn't resolved" in details[1], details
    run_cli(seen, "failed")
    for message_id, state in query("SELECT id, state FROM messages"):
        # `status` exits by state: 0 sent, 1 failed or rejected, 4 still in flight.
        code = {"sent": 0, "failed": 1, "rejected": 1}.get(state, 4)
        run_cli(seen, "status", message_id, "--json", exit_code=code)
        run_cli(seen, "status", message_id, exit_code=code)
    accounts = run_cli(seen, "accounts", "list", "--json")
    assert {a["address"] for a in accounts} == set(senders.values())
    assert {a["last_error_code"] for a in accounts} == {"invalid_recipient"}
    run_cli(seen, "accounts", "list")


def test_no_message_content_in_flower_inspect_logs_cli_or_metrics(
        emulator: EmulatorHandle, gmail_account: str, ms_account: str, tmp_path: Path,
        unmigrated_database: str, start_worker: Callable[..., Worker]) -> None:
    tag = uuid.uuid4().hex
    senders = {"gmail": gmail_account, "microsoft": ms_account}
    password = f"pw-{uuid.uuid4().hex}"
    login = ("ops", password)
    seen = Seen()
    ports = {"intake": free_port(), "deliver": free_port()}

    def metrics_env(name: str) -> dict[str, str]:
        (tmp_path / f"prom-{name}").mkdir()
        return {"MAILRELAY_METRICS_PORT": str(ports[name]),
                "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / f"prom-{name}")}

    # The intake worker reaches PostgreSQL through a proxy that is down for now: every
    # mailrelay.send fails to connect and is retried, scheduled by countdown. One
    # process, and room to hold tasks beyond it: one send active, the next reserved.
    outage = Outage(5432)
    url = os.environ["MAILRELAY_DATABASE_URL"].replace("127.0.0.1:5432", f"127.0.0.1:{outage.port}")
    intake = start_worker("mailrelay.intake", concurrency=1, prefetch_multiplier=4,
                          extra_env={"MAILRELAY_DATABASE_URL": url, **metrics_env("intake")})
    deliver = start_worker("mailrelay.gmail,mailrelay.microsoft", concurrency=2,
                           extra_env=metrics_env("deliver"))
    flower = Flower(free_port(), tmp_path, {"MAILRELAY_FLOWER_AUTH": f"ops:{password}"})
    reader = FlowerReader(flower, login, seen)
    try:
        flower.wait_listening()
        online = [f'flower_worker_online{{worker="{w.name}"}} 1.0' for w in (intake, deliver)]
        wait_for(lambda: all(line in flower.get("/metrics").text for line in online), 30,
                 "Flower to hear the workers")
        refused = deliver_and_refuse(tag, senders, emulator)

        # Waiting: from mailrelay's client, from a producer without mailrelay, and one
        # published with a countdown that outlasts the test.
        retried = [send_async(content(gmail_account, tag)).id,
                   produce_externally(content(ms_account, tag))]
        later = app.send_task(SEND_TASK, kwargs={"message": content(gmail_account, tag)},
                              countdown=600).id
        # A send that was received without a countdown and is now scheduled was retried.
        poll_inspect(intake.name, seen, lambda found: set(retried) <= found["scheduled"]
                     and later in found["scheduled"], 60, "both sends retried")
        # A producer's typo: the worker logs what it cannot run.
        app.send_task("mailrelay.snd", kwargs={"message": content(gmail_account, tag)},
                      queue=INTAKE_QUEUE)
        wait_for(lambda: "unregistered task of type 'mailrelay.snd'" in intake.log_path.read_text(),
                 30, "the intake worker to refuse mailrelay.snd")

        # The database now hangs: a send waits for its connect timeout (active), the next
        # one waits for the pool (reserved).
        outage.up(answer=False)
        hanging = [send_async(content(gmail_account, tag)).id,
                   produce_externally(content(ms_account, tag))]
        ours = {*retried, later, *hanging}
        poll_inspect(intake.name, seen, lambda found: bool(
            found["active"] & ours and found["reserved"] & ours), 60, "a send active, one reserved")
        cli_inspect = celery_inspect(intake.name, [["active"], ["reserved"], ["scheduled"],
                                                   ["query_task", *sorted(ours)]], seen)
        assert later in cli_inspect and any(task_id in cli_inspect for task_id in hanging + retried)
        inspected = reader.worker(intake.name)
        assert later in {entry["request"]["id"] for entry in inspected["scheduled"]}
        scrape(ports["intake"], seen, "intake")

        # The sends meet a database without mailrelay's tables (a worker started before
        # `mailrelay db upgrade`): each fails, and Celery logs "raised unexpected".
        outage.down()
        intake.stop()  # its unacknowledged tasks go back to the queue
        unmigrated = start_worker("mailrelay.intake", concurrency=1,
                                  extra_env={"MAILRELAY_DATABASE_URL": unmigrated_database})
        states: Counter[str] = Counter()

        def all_failed() -> bool:
            tasks = flower.get("/api/tasks", login).json()
            states.clear()
            states.update(tasks.get(task_id, {}).get("state") for task_id in retried + hanging)
            return states == Counter({"FAILURE": 4})

        wait_for(all_failed, 60, f"the waiting sends to fail in Flower ({states})")
        for worker in (deliver, unmigrated):
            reader.worker(worker.name)
        tasks = reader.everything()
        # Flower lists every send, the one still waiting for its countdown too.
        assert ours <= set(tasks)
        scrape(ports["deliver"], seen, "deliver")
    finally:
        returncode = flower.stop()
        outage.down()
    assert returncode == 0, flower.log()
    for worker in (intake, deliver, unmigrated):
        worker.stop()
        seen.add(f"{worker.name} log", worker.log_path.read_text(errors="replace"))
    seen.add("flower log", flower.log_path.read_text(errors="replace"))
    assert seen.texts[f"{unmigrated.name} log"].count("raised unexpected: ProgrammingError") >= 4
    read_cli(seen, refused, senders)

    assert len(seen.texts) > 40
    leaks = seen.leaks(tag)
    assert not leaks, f"message content seen in: {leaks}"
    assert password not in "".join(seen.texts.values())
