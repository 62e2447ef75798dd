"""`mailrelay demo`: the whole system on embedded defaults, with sample messages.

SQLite in the work directory; the Redis at MAILRELAY_REDIS_URL if it answers, else a
private redis-server; the provider emulator (HTTPS, its own CA); workers, beat and
Flower as child processes; sample messages with expected outcomes. Every child is in
its own process group and is stopped on exit, Ctrl-C included.
"""

from __future__ import annotations

import base64
import os
import secrets
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from mailrelay.cli import demo_system
from mailrelay.cli.exits import FAILED, UNAVAILABLE, Exit
from mailrelay.cli.output import table

# A 1×1 transparent PNG, small enough to inline here.
PIXEL_PNG = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")).decode()

GMAIL_SENDER = "demo@gmail-demo.example"
MS_SENDER = "demo@contoso-demo.example"
SMTP_SENDER = "demo@smtp-demo.example"
SINK_SENDER = "demo@sink-demo.example"
MS_TENANT = "contoso-demo"
CLIENT_ID = "mailrelay-demo.apps.example"
# The emulator's OAuth client for the demo: known to the emulator only, guards nothing real.
CLIENT_SECRET = "demo-client-secret"  # noqa: S105


@dataclass(frozen=True)
class Sample:
    label: str
    message: dict[str, Any]
    expect_state: str
    expect_code: str | None = None
    # An emulator fault rule injected just before this sample is sent.
    fault: dict[str, Any] = field(default_factory=dict)


def samples() -> list[Sample]:
    gmail = {"from": GMAIL_SENDER, "to": ["Ada Lovelace <ada@example.org>"],
             "subject": "Hello from mailrelay"}
    big = base64.b64encode(os.urandom(5 * 1024 * 1024)).decode()
    return [
        Sample("gmail: plain text", {**gmail, "text": "A plain message."}, "sent"),
        Sample("gmail: html, inline image, attachments", {
            **gmail, "subject": "Report ✓", "cc": ["José <jose@bücher.example>"],
            "bcc": ["audit@example.net"], "text": "See the report.",
            "html": '<p>See the <b>report</b>.</p><img src="cid:logo@demo" alt="logo">',
            "inline": [{"filename": "logo.png", "content_type": "image/png", "content": PIXEL_PNG,
                        "cid": "logo@demo"}],
            "attachments": [
                {"filename": "report.txt", "content_type": "text/plain",
                 "content": base64.b64encode(b"quarterly numbers\n").decode()},
                {"filename": "data.csv", "content_type": "text/csv",
                 "content": base64.b64encode(b"a,b\n1,2\n").decode()}],
        }, "sent"),
        Sample("gmail: 5 MB attachment (upload path)", {
            **gmail, "subject": "Large", "text": "Big file attached.",
            "attachments": [{"filename": "big.bin", "content_type": "application/octet-stream",
                             "content": big}]}, "sent"),
        Sample("bad recipient", {**gmail, "to": ["not an address"], "text": "x"}, "rejected",
               "invalid_address"),
        Sample("header injection", {**gmail, "text": "x", "headers": {"X-Tag": "a\r\nBcc: evil@x.y"}},
               "rejected", "invalid_header"),
        Sample("unknown account", {**gmail, "from": "nobody@example.com", "text": "x"}, "rejected",
               "unknown_account"),
        Sample("gmail: 429, retried after Retry-After", {**gmail, "text": "Retried."}, "sent",
               fault={"endpoint": "gmail.send", "status": 429, "count": 1, "retry_after": 2}),
        Sample("microsoft: html, inline image, attachment", {
            **gmail, "from": MS_SENDER, "subject": "From Microsoft 365", "text": "Hi.",
            "html": '<p>Hi from <b>Graph</b>.</p><img src="cid:logo@demo">',
            "headers": {"X-Demo": "graph"},
            "inline": [{"filename": "logo.png", "content_type": "image/png", "content": PIXEL_PNG,
                        "cid": "logo@demo"}],
            "attachments": [{"filename": "notes.txt", "content_type": "text/plain",
                             "content": base64.b64encode(b"meeting notes\n").decode()}]}, "sent"),
        Sample("microsoft: 5 MB attachment (upload session)", {
            **gmail, "from": MS_SENDER, "subject": "Large via Graph", "text": "Big file.",
            "attachments": [{"filename": "big.bin", "content_type": "application/octet-stream",
                             "content": big}]}, "sent"),
        Sample("smtp: through a local SMTP server", {"from": SMTP_SENDER, "to": ["x@example.org"],
                                                     "subject": "SMTP", "text": "Relayed."}, "sent"),
        Sample("sink: recorded in the database", {"from": SINK_SENDER, "to": ["x@example.org"],
                                                  "subject": "Sink", "text": "Recorded."}, "sent"),
    ]


def _persisted_secret(path: Path, make: Any) -> str:
    """A demo secret kept in the work directory (mode 0600) so that reruns can read old data."""
    if path.exists():
        return path.read_text().strip()
    value = str(make())
    path.touch(mode=0o600)
    path.write_text(value)
    return value


def _base_env(stack: Any, workdir: Path) -> dict[str, str]:
    from mailrelay.auth.crypto import new_key
    from mailrelay.devstack import redis_answers

    env: dict[str, str] = {}
    if "MAILRELAY_DATABASE_URL" not in os.environ:
        env["MAILRELAY_DATABASE_URL"] = f"sqlite:///{workdir.resolve() / 'mailrelay.db'}"
    if not os.environ.get("MAILRELAY_SECRET_KEY"):
        env["MAILRELAY_SECRET_KEY"] = _persisted_secret(workdir / "secret.key", new_key)
    if not os.environ.get("MAILRELAY_FLOWER_AUTH"):
        env["MAILRELAY_FLOWER_AUTH"] = "demo:" + _persisted_secret(
            workdir / "flower.password", lambda: secrets.token_urlsafe(12))
    configured = os.environ.get("MAILRELAY_REDIS_URL", "redis://127.0.0.1:6379/2")
    if not redis_answers(configured):
        click.echo("no Redis answers; starting a private redis-server")
        url = stack.start_redis()
        env.update(MAILRELAY_BROKER_URL=f"{url}/0", MAILRELAY_RESULT_BACKEND=f"{url}/1",
                   MAILRELAY_REDIS_URL=f"{url}/2")
    return env


@click.command("demo")
@click.option("--once", is_flag=True, help="Send the samples, check them, stop everything, exit.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path(".demo"),
              show_default=True, help="Where the SQLite file, secrets and logs go.")
@click.option("--monitoring", is_flag=True,
              help="Also run Prometheus, Alertmanager and Pushgateway with monitoring/'s rules "
                   "and routes (Debian's packages), one worker per profile, and print alerts "
                   "as Alertmanager delivers them.")
def command(once: bool, workdir: Path, monitoring: bool) -> None:
    """Run mailrelay locally with the emulator, workers, beat and Flower; send samples."""
    from mailrelay.devstack import Stack, StackError, emulator_env

    workdir.mkdir(parents=True, exist_ok=True)
    stack = Stack(workdir)
    try:
        os.environ.update(_base_env(stack, workdir))
        url, bundle = stack.start_emulator()
        os.environ.update(emulator_env(url, bundle))
        ok = _run(stack, workdir, url, bundle, once, monitoring)
    except StackError as err:
        raise Exit(str(err), UNAVAILABLE) from None
    finally:
        stack.stop()
    if not ok:
        raise Exit("some samples did not end as expected", FAILED)


def _accounts(emulator: Any, smtp_port: int) -> None:
    """Register the demo accounts; the emulator forgets grants between runs, so renew them."""
    from mailrelay.auth import accounts
    from mailrelay.auth.credentials import forget
    from mailrelay.devstack import emulator_account

    emulator_account(emulator, "gmail", GMAIL_SENDER, client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    emulator_account(emulator, "microsoft", MS_SENDER, client_id=CLIENT_ID,
                     client_secret=CLIENT_SECRET, tenant=MS_TENANT)
    existing = {a["address"] for a in accounts.list_all()}
    server = f"smtp+insecure://127.0.0.1:{smtp_port}"
    if SMTP_SENDER in existing:  # the local server's port changes from run to run
        accounts.set_server(SMTP_SENDER, server)
    else:
        accounts.add("smtp", SMTP_SENDER, tenant=server)
    if SINK_SENDER not in existing:
        accounts.add("sink", SINK_SENDER)
    forget()


def _run(stack: Any, workdir: Path, url: str, bundle: str, once: bool, monitoring: bool) -> bool:
    from mailrelay.config import get_settings
    from mailrelay.emulator.client import EmulatorClient
    from mailrelay.store import migrate

    get_settings.cache_clear()
    settings = get_settings()
    migrate.upgrade(settings.database_url)
    emulator = EmulatorClient(url, verify=bundle)
    smtp = _smtp_server()
    try:
        return _serve(stack, workdir, url, bundle, once, emulator, smtp, monitoring)
    finally:
        smtp.controller.stop()


def _serve(stack: Any, workdir: Path, url: str, bundle: str, once: bool, emulator: Any,
           smtp: _SmtpServer, monitoring: bool) -> bool:
    from mailrelay.config import get_settings

    settings = get_settings()
    _accounts(emulator, smtp.port)
    system = demo_system.start(stack, workdir, monitoring=monitoring, echo=click.echo)
    demo_system.write_stack_file(workdir / "stack.json", system, emulator_url=url, bundle=bundle,
                                 senders={"gmail": GMAIL_SENDER, "microsoft": MS_SENDER,
                                          "smtp": SMTP_SENDER, "sink": SINK_SENDER})
    click.echo(f"database: {settings.database_url}\nbroker:   {settings.broker_url}\n"
               f"workers, beat and Flower started; logs in {workdir}/")
    if system.monitoring is not None:
        from mailrelay.devmonitoring import targets_up

        expected = len(system.scraped)
        up = targets_up(system.monitoring.prometheus, expected=expected)
        click.echo(f"prometheus:   {system.monitoring.prometheus}  ({up}/{expected} targets up; "
                   f"alerts: /alerts)\n"
                   f"alertmanager: {system.monitoring.alertmanager}\n"
                   f"pushgateway:  {system.monitoring.pushgateway}\n"
                   f"scenarios:    mailrelay scenarios list; mailrelay scenarios run NAME "
                   f"--stack {workdir / 'stack.json'}")
    rows = _send_samples(emulator)
    table(rows, ["sample", "id", "state", "attempts", "error_code", "expected", "ok"], title="demo")
    requests = emulator.stats()["requests"]
    ok = (all(row["ok"] == "yes" for row in rows) and requests.get("gmail.upload", 0) >= 1
          and requests.get("graph.upload_session", 0) >= 1 and smtp.received >= 1)
    user = settings.flower_auth.split(":", 1)[0]
    click.echo(f"inbox:  {url}/inbox   (the emulator's mailboxes; CA: {bundle})\n"
               f"flower: http://127.0.0.1:{settings.flower_port}   (user {user!r}, password in "
               f"{workdir / 'flower.password'} unless MAILRELAY_FLOWER_AUTH is set)\n"
               f"status: mailrelay status ID")
    if once:
        return ok
    click.echo("mailrelay is running. Ctrl-C stops everything.")
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        click.echo("stopping")
    return ok


class _SmtpServer:
    """A local SMTP server for the SMTP sample (aiosmtpd, installed with the test extra)."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        from mailrelay.devstack import free_port

        self.received = 0
        self.port = free_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # aiosmtpd's hook name
        self.received += 1
        return "250 2.0.0 accepted by the demo server"


def _smtp_server() -> _SmtpServer:
    try:
        return _SmtpServer()
    except ImportError:
        raise Exit("the demo's SMTP sample needs aiosmtpd: pip install 'mailrelay[test]'",
                   UNAVAILABLE) from None


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _send_samples(emulator: Any) -> list[dict[str, Any]]:
    from mailrelay.client import submit

    rows: list[dict[str, Any]] = []
    chosen: dict[str, Sample] = {}
    for sample in samples():
        if sample.fault:
            _wait_final([row["id"] for row in rows])  # the fault must meet this message only
            emulator.inject(**sample.fault)
        result = submit(sample.message, actor="demo")
        rows.append({"sample": sample.label, "id": result.message_id})
        chosen[result.message_id] = sample
    finals = _wait_final([row["id"] for row in rows])
    for row in rows:
        sample, info = chosen[row["id"]], finals[row["id"]]
        expected = sample.expect_state + (f" ({sample.expect_code})" if sample.expect_code else "")
        ok = info.get("state") == sample.expect_state and info.get("error_code") == sample.expect_code
        row.update(state=info.get("state"), attempts=len(info.get("attempts", [])),
                   error_code=info.get("error_code"), expected=expected, ok="yes" if ok else "NO")
    return rows


def _wait_final(ids: list[str], timeout: float = 90) -> dict[str, dict[str, Any]]:
    from mailrelay.store import outbox
    from mailrelay.store.states import FINAL

    deadline = time.monotonic() + timeout
    while True:
        infos = {i: outbox.status(i) or {} for i in ids}
        if all(info.get("state") in FINAL for info in infos.values()) or time.monotonic() > deadline:
            return infos
        time.sleep(0.25)
