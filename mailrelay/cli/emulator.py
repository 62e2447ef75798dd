"""`mailrelay emulator`: run the provider emulator, or steer a running one."""

from __future__ import annotations

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

from mailrelay.cli.exits import FAILED, UNAVAILABLE, Exit
from mailrelay.cli.output import emit_json, json_option, table
from mailrelay.emulator.client import EmulatorClient, EmulatorError


@click.group("emulator", invoke_without_command=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="Port to listen on; 0 picks a free one.")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where the CA, the server certificate and bundle.pem live; reused on restart "
                   "so clients keep trusting it. Default: a temporary directory.")
@click.pass_context
def command(ctx: click.Context, host: str, port: int, state_dir: Path | None) -> None:
    """Run the HTTPS provider emulator (Google's token endpoint and Gmail API) in the
    foreground until Ctrl-C or SIGTERM; the subcommands talk to a running one."""
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
            raise Exit(f"cannot listen on {host}:{port}: {err.strerror or err}", FAILED) from None
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
    return click.option("--ca", type=click.Path(dir_okay=False, exists=True, path_type=Path),
                        help="CA or bundle that trusts the emulator (default: REQUESTS_CA_BUNDLE).")(func)


@contextmanager
def _client(url: str, ca: Path | None) -> Iterator[EmulatorClient]:
    try:
        yield EmulatorClient(url, verify=ca if ca is not None else True)
    except requests.ConnectionError as err:
        raise Exit(f"emulator at {url} unavailable: {err}", UNAVAILABLE) from None
    except EmulatorError as err:
        raise Exit(str(err), FAILED) from None


@command.command("inject")
@_connection
@click.option("--endpoint", required=True, help="gmail.send, gmail.upload, gmail.list, gmail.profile, "
              "google.token, or * for all of them.")
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
def reset(url: str, ca: Path | None, everything: bool) -> None:
    """Forget faults, counters and messages (clients and grants stay unless --all)."""
    with _client(url, ca) as client:
        client.reset(everything=everything)
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
