"""`mailrelay flower` against a real worker: nothing without the login, and with it task ids,
names, states and counts of mailrelay's tasks, but no message content anywhere."""

from __future__ import annotations

import ast
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from mailrelay.celery_app import CONTROL_QUEUE, SEND_TASK, app
from mailrelay.client import send_async, submit
from mailrelay.devstack import free_port
from tests.integration.helpers import produce_externally, scalar, wait_for
from tests.processes import Flower, Worker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

def _message(sender: str, recipient: str, marker: str, body: str) -> dict[str, Any]:
    return {"from": sender, "to": [f"Ada Lovelace <{recipient}>"], "subject": f"Report {marker}",
            "text": body, "html": f"<p>{body}</p>"}


def test_flower_needs_the_login_and_shows_tasks_without_content(
        sink_account: str, clean_redis: None, tmp_path: Path,
        start_worker: Callable[..., Worker]) -> None:
    started = time.monotonic()
    marker = f"marker-{uuid.uuid4().hex}"
    recipient = f"ada.{uuid.uuid4().hex[:12]}@example.org"
    body = f"Quarterly numbers, {marker}: the body text that Flower must never show."
    password = f"pw-{uuid.uuid4().hex}"
    login = ("ops", password)
    secrets = [marker, recipient, body, "Quarterly numbers", password]

    worker = start_worker("mailrelay.intake,mailrelay.sink", concurrency=2)
    flower = Flower(free_port(), tmp_path, {"MAILRELAY_FLOWER_AUTH": f"ops:{password}"})
    try:
        flower.wait_listening()
        # Nobody reads the password off Flower's command line.
        assert password.encode() not in Path(f"/proc/{flower.process.pid}/cmdline").read_bytes()

        # Flower sees only events sent after it connected: wait for the worker's heartbeat.
        online = f'flower_worker_online{{worker="{worker.name}"}} 1.0'
        wait_for(lambda: online in flower.get("/metrics").text, 20, "Flower to hear the worker")

        # Three ways in: in-process intake (only mailrelay.deliver runs on a worker), the
        # client's send_async, and a producer without mailrelay.
        message = _message(sink_account, recipient, marker, body)
        submitted = submit(message).message_id
        async_id = send_async(message).id
        external_id = produce_externally(message)
        send_ids = {async_id, external_id}
        # And a task no worker takes (none consumes mailrelay.control here; it expires),
        # published with mailrelay's own app and no kwargsrepr: its task-sent event holds
        # the whole message, and only the worker's task-received would have replaced it.
        pending_id = app.send_task(SEND_TASK, kwargs={"message": message}, queue=CONTROL_QUEUE,
                                   expires=30).id

        wait_for(lambda: scalar("SELECT count(*) FROM messages WHERE state = 'sent'") == 3, 30,
                 "3 messages sent")

        def flower_done() -> bool:
            tasks = flower.get("/api/tasks", login).json()
            done = Counter(t["name"] for t in tasks.values() if t["state"] == "SUCCESS")
            return (done == Counter({"mailrelay.send": 2, "mailrelay.deliver": 3})
                    and pending_id in tasks)

        wait_for(flower_done, 20, "Flower to list 2 mailrelay.send and 3 mailrelay.deliver")

        # The content really went through the system: the sink holds it.
        assert scalar("SELECT count(*) FROM sink_deliveries WHERE envelope LIKE :r",
                      r=f"%{recipient}%") == 3

        # Without the login (or with a wrong one): 401, on the pages and on the API.
        for path in ("/", "/api/workers", "/tasks", "/api/tasks", f"/task/{async_id}"):
            assert flower.get(path).status_code == 401, path
            assert flower.get(path, ("ops", "wrong")).status_code == 401, path
            assert flower.get(path, ("ops", password[:-1])).status_code == 401, path

        # With it: the API lists the tasks, with ids, names, states and counts.
        listing = flower.get("/api/tasks", login)
        assert listing.status_code == 200
        tasks = listing.json()
        assert send_ids <= set(tasks)
        seen: dict[str, str] = {}  # page -> text, every one checked for content below
        seen["/api/tasks"] = listing.text
        assert flower.get("/api/workers", login).status_code == 200

        message_ids = set()
        for task_id, task in tasks.items():
            info = flower.get(f"/api/task/info/{task_id}", login)
            assert info.status_code == 200
            seen[f"/api/task/info/{task_id}"] = info.text
            detail = info.json()
            if task_id == pending_id:
                assert (detail["name"], detail["state"]) == ("mailrelay.send", "PENDING")
                assert detail["args"] is None and detail["kwargs"] is None
            elif task["name"] == "mailrelay.send":
                assert detail["kwargs"] == "{'message': '<redacted>'}"
                result = ast.literal_eval(detail["result"])
                assert set(result) == {"id", "state", "error_code"}
                assert result["state"] == "queued" and result["error_code"] is None
                message_ids.add(result["id"])
                # What the result backend holds (Flower's /api/task/result) is the same shape.
                stored = flower.get(f"/api/task/result/{task_id}", login)
                seen[f"/api/task/result/{task_id}"] = stored.text
                assert set(stored.json()["result"]) == {"id", "state", "error_code"}
            else:
                kwargs = ast.literal_eval(detail["kwargs"])
                assert set(kwargs) == {"message_id"}
                message_ids.add(kwargs["message_id"])
                assert ast.literal_eval(detail["result"]) == "sent"
            page = flower.get(f"/task/{task_id}", login)
            assert page.status_code == 200 and task_id in page.text
            seen[f"/task/{task_id}"] = page.text
        assert submitted in message_ids and len(message_ids) == 3
        assert len(tasks) == 6

        # The pages Flower renders: /tasks, and the rows its table loads from /tasks/datatable.
        page = flower.get("/tasks", login)
        assert page.status_code == 200
        seen["/tasks"] = page.text
        rows = flower.get("/tasks/datatable", login, draw=1, start=0, length=100,
                          **{"order[0][column]": 0, "order[0][dir]": "desc",
                             "columns[0][data]": "received", "search[value]": ""})
        assert rows.status_code == 200
        assert {row["uuid"] for row in rows.json()["data"]} == set(tasks)
        seen["/tasks/datatable"] = rows.text
        for path in ("/", "/workers", "/api/task/types", "/metrics"):
            seen[path] = flower.get(path, login).text

        leaks = [(path, secret) for path, text in seen.items() for secret in secrets
                 if secret in text]
        assert leaks == []
        # Read-only: a Flower login cannot send mail (or revoke, or stop workers).
        refused = requests.post(f"{flower.url}/api/task/async-apply/mailrelay.send", auth=login,
                                json={"kwargs": {"message": message}}, timeout=10)
        assert refused.status_code == 403
    finally:
        returncode = flower.stop()
    assert returncode == 0, flower.log()
    assert password not in flower.log()
    assert time.monotonic() - started < 60
