"""`mailrelay emulator`: run the provider emulator, or steer a running one."""

from __future__ import annotations

import re
import shlex
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import click
import requests

from mailrelay.cli.exits import FAILED, NO_INPUT, UNAVAILABLE, Exit
from mailrelay.cli.output import emit_json, json_option, table
from mailrelay.emulator.client import EmulatorClient, EmulatorError
from mailrelay.emulator.faults import RuleError, check_endpoint
from mailrelay.emulator.server import injectable_endpoints

# requests buries the reason ("[Errno 111] Connection refused") deep in its message.
_ERRNO_REASON = re.compile(r"\[Errno -?\d+\] ([^'\")]+)")


@click.group("emulator", invoke_without_command=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="Port to listen on; 0 picks a free one.")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where the CA, the server certificate and bundle.pem live; reused on restart "
                   "so clients keep trusting it. Default: a temporary directory.")
@click.pass_context
def command(ctx: click.Context, host: str, port: int, state_dir: Path | None) -> None:
    """Run the HTTPS provider emulator in the foreground until Ctrl-C or SIGTERM: Google
    (OAuth consent and token endpoint, the Gmail API), Microsoft (Entra ID for MSAL, Graph
    mail: sendMail, drafts, upload sessions, Sent Items) and an inbox page. It prints its
    URL and the CA bundle for REQUESTS_CA_BUNDLE. The subcommands steer a running one.
    Exit 69 if the port is taken."""
    if ctx.invoked_subcommand is not None:
        return
    from mailrelay.emulator.server import start

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            emulator = start(host, port, state_dir)
        except OSError as err:
            raise Exit(f"the emulator cannot listen on {host}:{port}: {err.strerror or err}",
                       UNAVAILABLE) from None
        try:
            for line in (f"emulator: {emulator.url}", f"ca: {emulator.ca_path}",
                         f"bundle: {emulator.bundle_path}",
                         f"export REQUESTS_CA_BUNDLE={shlex.quote(str(emulator.bundle_path))}"):
                click.echo(line)  # click.echo flushes: a parent process reads these lines
            # A timed wait, so the signal handler gets to run promptly on the main thread.
            while not stop.wait(0.5):
                pass
        finally:
            emulator.stop()
        click.echo("emulator: stopped", err=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _connection(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--url", required=True, help="The emulator's URL, e.g. https://127.0.0.1:8443.")(func)
    return click.option("--ca", type=click.Path(dir_okay=False, path_type=Path),
                        help="CA or bundle that trusts the emulator (default: REQUESTS_CA_BUNDLE).")(func)


@contextmanager
def _client(url: str, ca: Path | None) -> Iterator[EmulatorClient]:
    if ca is not None and not ca.is_file():
        raise Exit(f"cannot read {ca}: no such file", NO_INPUT)
    try:
        yield EmulatorClient(url, verify=ca if ca is not None else True)
    except requests.ConnectionError as err:
        found = _ERRNO_REASON.search(str(err))
        reason = found[1].strip() if found else type(err).__name__
        raise Exit(f"emulator unavailable at {url}: {reason}", UNAVAILABLE) from None
    except EmulatorError as err:
        raise Exit(str(err), FAILED) from None


def _endpoint(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        check_endpoint(value, injectable_endpoints())
    except RuleError as err:
        raise click.BadParameter(str(err)) from None
    return value


@command.command("inject")
@_connection
@click.option("--endpoint", required=True, callback=_endpoint, metavar="NAME",
              help=f"The endpoint to fail: {', '.join(injectable_endpoints())}; or * for all.")
@click.option("--status", type=click.IntRange(100, 599), help="Answer with this HTTP status.")
@click.option("--count", type=click.IntRange(1), help="Fire this many times, then vanish.")
@click.option("--probability", type=click.FloatRange(0, 1), help="Fire at random with this chance.")
@click.option("--retry-after", type=click.IntRange(0), metavar="SECONDS", help="Send a Retry-After header.")
@click.option("--latency-ms", type=click.IntRange(0), help="Delay the answer by this much.")
@click.option("--drop", is_flag=True, help="Close the connection without answering.")
@click.option("--after-send", is_flag=True,
              help="Deliver the message first, then answer with --status or --drop (send endpoints).")
@click.option("--reason", help="The error reason, e.g. userRateLimitExceeded or dailyLimitExceeded.")
@click.option("--mailbox", help="Only for requests acting for this mailbox.")
@json_option
def inject(url: str, ca: Path | None, endpoint: str, status: int | None, count: int | None,
           probability: float | None, retry_after: int | None, latency_ms: int | None, drop: bool,
           after_send: bool, reason: str | None, mailbox: str | None, as_json: bool) -> None:
    """Add a failure rule: a status, a dropped connection, or latency alone."""
    if count is not None and probability is not None:
        raise click.UsageError("--count and --probability exclude each other")
    if status is None and not drop and latency_ms is None:
        raise click.UsageError("give --status, --drop or --latency-ms")
    rule = {"endpoint": endpoint, "status": status, "count": count, "probability": probability,
            "retry_after": retry_after, "latency_ms": latency_ms, "drop": drop,
            "after_send": after_send, "reason": reason, "mailbox": mailbox}
    with _client(url, ca) as client:
        rule_id = client.inject(**rule)
    if as_json:
        emit_json({"id": rule_id, "rule": rule})
    else:
        what = "drop" if drop else f"status {status}" if status is not None else "latency only"
        click.echo(f"rule {rule_id}: {endpoint} → {what}")


@command.command("reset")
@_connection
@click.option("--all", "everything", is_flag=True, help="Also forget OAuth clients, grants and tokens.")
@json_option
def reset(url: str, ca: Path | None, everything: bool, as_json: bool) -> None:
    """Forget faults, counters and messages (clients and grants stay unless --all)."""
    with _client(url, ca) as client:
        client.reset(everything=everything)
    if as_json:
        emit_json({"reset": True, "all": everything})
    else:
        click.echo("reset")


@command.command("stats")
@_connection
@json_option
def stats(url: str, ca: Path | None, as_json: bool) -> None:
    """Requests per endpoint and the most seen in flight at once."""
    with _client(url, ca) as client:
        data = client.stats()
    if as_json:
        emit_json(data)
        return
    names = sorted(set(data["requests"]) | set(data["max_concurrency"]) - {"*"})
    rows = [{"endpoint": name, "requests": data["requests"].get(name, 0),
             "max_concurrency": data["max_concurrency"].get(name, 0)} for name in names]
    rows.append({"endpoint": "*", "requests": sum(data["requests"].values()),
                 "max_concurrency": data["max_concurrency"].get("*", 0)})
    table(rows, ["endpoint", "requests", "max_concurrency"], title="emulator")
