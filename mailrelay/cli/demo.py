"""`mailrelay demo`: the whole system on embedded defaults, with sample messages.

SQLite in the work directory, the Redis at MAILRELAY_REDIS_URL if it answers (else a
private redis-server), real worker processes, sample messages with expected outcomes.
"""

from __future__ import annotations

import base64
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

from mailrelay.cli.exits import FAILED, UNAVAILABLE, Exit
from mailrelay.cli.output import table

# A 1×1 transparent PNG, small enough to inline here.
PIXEL_PNG = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")).decode()

SENDER = "demo@example.com"


@dataclass(frozen=True)
class Sample:
    label: str
    message: dict[str, Any]
    expect_state: str
    expect_code: str | None = None
    fault: str | None = None


def samples() -> list[Sample]:
    base = {"from": SENDER, "to": ["Ada Lovelace <ada@example.org>"], "subject": "Hello from mailrelay"}
    return [
        Sample("plain text", {**base, "text": "A plain message."}, "sent"),
        Sample("html, inline image, attachment", {
            **base, "subject": "Report ✓", "text": "See the report.",
            "html": '<p>See the report.</p><img src="cid:logo@demo">',
            "inline": [{"filename": "logo.png", "content_type": "image/png", "content": PIXEL_PNG,
                        "cid": "logo@demo"}],
            "attachments": [{"filename": "report.txt", "content_type": "text/plain",
                             "content": base64.b64encode(b"quarterly numbers\n").decode()}],
        }, "sent"),
        Sample("cc, bcc and an IDN domain", {
            **base, "cc": ["José <jose@bücher.example>"], "bcc": ["audit@example.net"],
            "text": "Copied."}, "sent"),
        Sample("bad recipient", {**base, "to": ["not an address"], "text": "x"}, "rejected",
               "invalid_address"),
        Sample("unknown account", {**base, "from": "nobody@example.com", "text": "x"}, "rejected",
               "unknown_account"),
        Sample("header injection", {**base, "text": "x", "headers": {"X-Tag": "a\r\nBcc: evil@x.y"}},
               "rejected", "invalid_header"),
        Sample("provider says 429, then accepts", {**base, "text": "Retried."}, "sent",
               fault="rate_limited"),
    ]


def _service_env(workdir: Path) -> dict[str, str]:
    from mailrelay.devstack import redis_answers

    env: dict[str, str] = {}
    if "MAILRELAY_DATABASE_URL" not in os.environ:
        env["MAILRELAY_DATABASE_URL"] = f"sqlite:///{workdir.resolve() / 'mailrelay.db'}"
    configured = os.environ.get("MAILRELAY_REDIS_URL", "redis://127.0.0.1:6379/2")
    parts = urlsplit(configured)
    base = f"{parts.scheme}://{parts.netloc}"
    return env if redis_answers(configured) else {**env, "_base": base}


@click.command("demo")
@click.option("--once", is_flag=True, help="Send the samples, check them, stop everything, exit.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path(".demo"),
              show_default=True, help="Where the SQLite file and the logs go.")
def command(once: bool, workdir: Path) -> None:
    """Run mailrelay locally with real workers and show sample messages end to end."""
    from mailrelay.devstack import Stack, StackError

    workdir.mkdir(parents=True, exist_ok=True)
    stack = Stack(workdir)
    try:
        env = _service_env(workdir)
        if env.pop("_base", None) is not None:
            click.echo("no Redis answers; starting a private redis-server")
            url = stack.start_redis()
            env.update(MAILRELAY_BROKER_URL=f"{url}/0", MAILRELAY_RESULT_BACKEND=f"{url}/1",
                       MAILRELAY_REDIS_URL=f"{url}/2")
        os.environ.update(env)
        ok = _run(stack, workdir, once)
    except StackError as err:
        raise Exit(str(err), UNAVAILABLE) from None
    finally:
        stack.stop()
    if not ok:
        raise Exit("some samples did not end as expected", FAILED)


def _run(stack: Any, workdir: Path, once: bool) -> bool:
    from mailrelay.config import get_settings
    from mailrelay.store import accounts, migrate

    get_settings.cache_clear()
    settings = get_settings()
    migrate.upgrade(settings.database_url)
    if SENDER not in {a["address"] for a in accounts.list_all()}:
        accounts.add("sink", SENDER)
    click.echo(f"database: {settings.database_url}\nbroker:   {settings.broker_url}")
    stack.start_worker("all")
    stack.wait_log("worker-all", " ready.")
    click.echo(f"workers ready; logs in {workdir}/")
    rows = _send_samples()
    table(rows, ["sample", "id", "state", "attempts", "error_code", "expected", "ok"], title="demo")
    ok = all(row["ok"] == "yes" for row in rows)
    if once:
        return ok
    click.echo("mailrelay is running: try `mailrelay status ID`. Ctrl-C stops everything.")
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        click.echo("stopping")
    return ok


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _send_samples() -> list[dict[str, Any]]:
    from mailrelay.client import submit
    from mailrelay.providers.sink import clear_faults, inject_fault

    clear_faults()
    rows: list[dict[str, Any]] = []
    for sample in samples():
        if sample.fault:
            _wait_final([row["id"] for row in rows])  # the fault must meet this message only
            inject_fault(sample.fault, retry_after=2)
        result = submit(sample.message, actor="demo")
        rows.append({"sample": sample.label, "id": result.message_id, "sample_obj": sample})
    finals = _wait_final([row["id"] for row in rows])
    for row in rows:
        sample = row.pop("sample_obj")
        info = finals[row["id"]]
        expected = sample.expect_state + (f" ({sample.expect_code})" if sample.expect_code else "")
        ok = info["state"] == sample.expect_state and info["error_code"] == sample.expect_code
        row.update(state=info["state"], attempts=len(info["attempts"]), error_code=info["error_code"],
                   expected=expected, ok="yes" if ok else "NO")
    return rows


def _wait_final(ids: list[str], timeout: float = 60) -> dict[str, dict[str, Any]]:
    from mailrelay.store import outbox
    from mailrelay.store.states import FINAL

    deadline = time.monotonic() + timeout
    while True:
        infos = {i: outbox.status(i) or {} for i in ids}
        if all(info.get("state") in FINAL for info in infos.values()) or time.monotonic() > deadline:
            return infos
        time.sleep(0.25)
