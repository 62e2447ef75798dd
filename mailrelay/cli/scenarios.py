"""`mailrelay scenarios`: real traffic with the emulator's faults, to make alerts fire.

A scenario runs against a running system that described itself in a stack file (the
demo writes ``.demo/stack.json``; a test writes its own): the emulator's URL, the
settings that reach the outbox and the broker, which process groups serve which queue,
and the sender of each provider. It injects faults in the emulator or pauses processes
(SIGSTOP, undone with SIGCONT), sends messages through ``mailrelay.send`` like any
producer, so every metric comes from the real code paths, and undoes what it did.
Nothing here writes a series by hand.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from mailrelay.cli.exits import NO_INPUT, UNAVAILABLE, USAGE, Exit
from mailrelay.cli.output import emit_json, json_option, table

DEFAULT_STACK = Path(".demo") / "stack.json"
# The stack file's settings a scenario needs: where the outbox, the broker and the
# emulator are. Never a secret: the file is a description, not a vault.
STACK_SETTINGS = ("MAILRELAY_DATABASE_URL", "MAILRELAY_BROKER_URL", "MAILRELAY_RESULT_BACKEND",
                  "MAILRELAY_REDIS_URL", "REQUESTS_CA_BUNDLE")


@dataclass
class Context:
    """What a scenario acts on."""

    stack: dict[str, Any]
    provider: str
    emulator: Any
    paused: list[int] = field(default_factory=list)
    created_rollout: bool = False

    @property
    def sender(self) -> str:
        return str(self.stack["senders"][self.provider])

    def pause(self, group: str) -> None:
        """SIGSTOP every process group serving ``group`` (a queue name or "beat")."""
        for pgid in self.stack["serves"].get(group, []):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(pgid), signal.SIGSTOP)
                self.paused.append(int(pgid))

    def resume_all(self) -> None:
        for pgid in self.paused:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGCONT)
        self.paused.clear()


def _message(ctx: Context, n: int, **extra: Any) -> dict[str, Any]:
    return {"from": ctx.sender, "to": [f"scenario-{n}@example.org"], "subject": f"scenario {n}",
            "text": "Sent by mailrelay scenarios.", **extra}


def _mostly_invalid(ctx: Context, n: int) -> dict[str, Any]:
    message = _message(ctx, n)
    if n % 5:  # four requests in five
        message["to"] = ["not an address"]
    return message


def _scripted_html(ctx: Context, n: int) -> dict[str, Any]:
    return _message(ctx, n, html='<p onclick="steal()">Hi<script>alert(1)</script></p>')


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    # (alertname, severity) that should fire in Prometheus while it runs.
    alerts: tuple[tuple[str, str], ...]
    # What on-call runs to see it.
    look: str
    setup: Callable[[Context], None] = lambda ctx: None
    message: Callable[[Context, int], dict[str, Any]] = _message
    # The provider endpoints' faults (emulator rules) while it runs.
    faults: tuple[dict[str, Any], ...] = ()
    pause: tuple[str, ...] = ()


def sending_endpoint(provider: str) -> str:
    return {"gmail": "gmail.send", "microsoft": "graph.sendmail"}.get(provider, "gmail.send")


def _token_endpoint(provider: str) -> str:
    return {"gmail": "google.token", "microsoft": "ms.token"}.get(provider, "google.token")


def _expire_tokens(ctx: Context) -> None:
    ctx.emulator.expire_tokens(ctx.sender)


def _running_rollout(ctx: Context) -> None:
    """A rollout the controller keeps evaluating (dry run, so nobody's mail moves), once
    the controller has evaluated it: only then is there a last evaluation to go stale."""
    if _rollout_state(ctx).get("state") != "running":
        _mailrelay(ctx, "rollout", "set", ctx.provider, "--mode", "dry_run", "--percent", "100",
                   "--reason", "scenario controller-stalled")
        ctx.created_rollout = True
    intervals = ctx.stack.get("intervals", {})
    deadline = time.monotonic() + 3 * float(intervals.get("rollout", 60)) + 30
    while not _rollout_state(ctx).get("last_evaluated_at"):
        if time.monotonic() > deadline:
            raise Exit("the rollout controller did not evaluate the rollout; is beat running?",
                       UNAVAILABLE)
        time.sleep(1)
    # And one export, so that Prometheus knows the rollout is running: the alert is about
    # running rollouts only.
    time.sleep(float(intervals.get("export", 30)) + 1)


def _rollout_state(ctx: Context) -> dict[str, Any]:
    shown = _mailrelay(ctx, "rollout", "status", ctx.provider, "--json", check=False)
    if shown.returncode != 0:
        return {}
    found = json.loads(shown.stdout)
    rows = found if isinstance(found, list) else [found]
    return next((row for row in rows if row.get("provider") == ctx.provider), {})


def catalog(provider: str = "gmail") -> list[Scenario]:
    send, token = sending_endpoint(provider), _token_endpoint(provider)
    return [
        Scenario("error-rate-warning", "3% of sends refused by the provider (400)",
                 (("MailrelayProviderErrorRatio", "warning"),),
                 "mailrelay failed --since 1h; provider:mailrelay_delivery_errors:ratio_rate5m",
                 faults=({"endpoint": send, "status": 400, "probability": 0.03},)),
        Scenario("error-rate-critical", "20% of sends refused by the provider (400)",
                 (("MailrelayProviderErrorRatio", "critical"), ("MailrelayErrorBudgetBurn", "critical")),
                 "mailrelay failed --since 1h; provider:mailrelay_delivery_errors:ratio_rate5m",
                 faults=({"endpoint": send, "status": 400, "probability": 0.2},)),
        Scenario("latency-critical", "every send takes 16 s at the provider",
                 (("MailrelayDeliveryLatency", "critical"),),
                 "provider_result:mailrelay_delivery_seconds:p95_rate5m",
                 faults=({"endpoint": send, "latency_ms": 16_000},)),
        Scenario("token-refresh-failures", "access tokens expire and the token endpoint fails (500)",
                 (("MailrelayTokenRefreshFailures", "warning"),),
                 "mailrelay accounts list; rate(mailrelay_token_refresh_failures_total[5m])",
                 setup=_expire_tokens, faults=({"endpoint": token, "status": 500},)),
        Scenario("backlog", "the provider's workers stopped (SIGSTOP) while producers send",
                 (("MailrelayQueueWithoutWorker", "critical"), ("MailrelayOldestMessageAge", "warning")),
                 "mailrelay_queue_length; mailrelay_outbox_oldest_queued_age_seconds",
                 pause=("provider",)),
        Scenario("controller-stalled", "beat stopped (SIGSTOP) while a rollout runs",
                 (("MailrelayBeatDown", "critical"), ("MailrelayRolloutControllerStalled", "warning")),
                 "mailrelay rollout status; time() - mailrelay_rollout_last_evaluation_timestamp_seconds",
                 setup=_running_rollout, pause=("beat",)),
        Scenario("provider-outage", "every send fails with 503",
                 (("MailrelayProviderOutage", "critical"),),
                 "mailrelay status ID; provider_code_class:mailrelay_delivery_errors:rate5m",
                 faults=({"endpoint": send, "status": 503},)),
        Scenario("validation-spike", "four requests in five name an invalid recipient",
                 (("MailrelayIntakeRejectionSpike", "info"),),
                 "mailrelay rejected --since 1h; :mailrelay_intake_rejected:ratio_rate10m",
                 message=_mostly_invalid),
        Scenario("sanitization-spike", "every HTML body carries a script and an event handler",
                 (("MailrelayHtmlSanitizationSpike", "info"),),
                 "rate(mailrelay_html_removed_total[5m]) by kind",
                 message=_scripted_html),
    ]


def find(name: str, provider: str = "gmail") -> Scenario:
    for scenario in catalog(provider):
        if scenario.name == name:
            return scenario
    known = ", ".join(s.name for s in catalog())
    raise Exit(f"no scenario {name!r} (known: {known})", USAGE)


# The running system's description, for the commands that act on it (scenarios, drills).
stack_option = click.option(
    "--stack", "stack_path", type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_STACK, show_default=True, metavar="PATH",
    help="The running system's description (`mailrelay demo` writes it; drills need "
         "`demo --monitoring`).")


def load_stack(path: Path) -> dict[str, Any]:
    try:
        stack = json.loads(path.read_text())
    except OSError as err:
        raise Exit(f"cannot read the stack file {path}: {err.strerror}; `mailrelay demo` writes "
                   ".demo/stack.json while it runs", NO_INPUT) from None
    except ValueError as err:
        raise Exit(f"{path} is not a stack file: {err}", USAGE) from None
    if not isinstance(stack, dict) or not {"emulator", "env", "senders", "serves"} <= set(stack):
        raise Exit(f"{path} is not a stack file (emulator, env, senders, serves)", USAGE)
    return stack


def _mailrelay(ctx: Context, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "mailrelay.cli", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **ctx.stack["env"]})
    if check and done.returncode != 0:
        raise Exit(f"`mailrelay {' '.join(args)}` failed: {done.stderr.strip()[-300:]}",
                   done.returncode)
    return done


@contextlib.contextmanager
def applied(scenario: Scenario, ctx: Context) -> Iterator[None]:
    """The scenario's faults, pauses and setup, undone on the way out, Ctrl-C included."""
    try:
        scenario.setup(ctx)
        for rule in scenario.faults:
            ctx.emulator.inject(**rule)
        for group in scenario.pause:
            ctx.pause(f"mailrelay.{ctx.provider}" if group == "provider" else group)
        yield
    finally:
        ctx.resume_all()
        if scenario.faults:
            ctx.emulator.clear_faults()
        if ctx.created_rollout:
            _mailrelay(ctx, "rollout", "remove", ctx.provider, "--yes", "--reason",
                       "scenario over", check=False)


def run(scenario: Scenario, ctx: Context, *, duration: float, rate: float,
        progress: Callable[[int, float], None]) -> int:
    """Send ``rate`` messages a second for ``duration`` seconds under the scenario; the count."""
    from mailrelay.celery_app import INTAKE_QUEUE, SEND_TASK, app

    sent = 0
    with applied(scenario, ctx):
        # The clock starts once the faults and pauses are in place: a setup that waits
        # (for the controller, say) must not eat the scenario's duration.
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < duration:
            due = int(elapsed * rate) + 1
            while sent < due:
                app.send_task(SEND_TASK, kwargs={"message": scenario.message(ctx, sent)},
                              queue=INTAKE_QUEUE)
                sent += 1
            if sent % max(int(rate * 10), 1) == 0:
                progress(sent, elapsed)
            time.sleep(min(1.0 / rate, 0.5))
    return sent


@click.group("scenarios")
def command() -> None:
    """Make alerts fire with real traffic: faults in the emulator, paused processes."""


@command.command("list")
@json_option
def list_command(as_json: bool) -> None:
    """What each scenario does and the alerts it should make fire."""
    rows = [{"name": s.name, "what": s.summary,
             "alerts": ", ".join(f"{name} ({severity})" for name, severity in s.alerts),
             "look": s.look} for s in catalog()]
    if as_json:
        emit_json(rows)
    else:
        table(rows, ["name", "what", "alerts", "look"], title="scenarios")


@command.command("run")
@click.argument("name")
@click.option("--duration", type=click.FloatRange(1, 86400), default=300.0, show_default=True,
              metavar="S", help="Seconds to keep the fault and the traffic going.")
@click.option("--rate", type=click.FloatRange(0.1, 200), default=4.0, show_default=True,
              metavar="N", help="Messages sent per second meanwhile.")
@click.option("--provider", type=click.Choice(["gmail", "microsoft"]), default="gmail",
              show_default=True, help="The provider the faults and the traffic go to.")
@stack_option
@json_option
def run_command(name: str, duration: float, rate: float, provider: str, stack_path: Path,
                as_json: bool) -> None:
    """Run scenario NAME against the running system, then undo its faults and pauses."""
    scenario = find(name, provider)
    stack = load_stack(stack_path)
    os.environ.update({k: v for k, v in stack["env"].items() if k in STACK_SETTINGS})
    from mailrelay.config import get_settings
    from mailrelay.emulator.client import EmulatorClient

    get_settings.cache_clear()
    emulator = EmulatorClient(stack["emulator"]["url"], verify=stack["emulator"]["bundle"])
    ctx = Context(stack, provider, emulator)
    if not as_json:
        click.echo(f"{scenario.name}: {scenario.summary}, {duration:.0f}s at {rate}/s to {provider}")
        for alert, severity in scenario.alerts:
            click.echo(f"  expect {alert} ({severity})")
        click.echo(f"  look:  {scenario.look}")

    def progress(count: int, elapsed: float) -> None:
        if not as_json:
            click.echo(f"  {elapsed:5.0f}s  {count} sent")

    sent = run(scenario, ctx, duration=duration, rate=rate, progress=progress)
    result = {"scenario": scenario.name, "provider": provider, "sent": sent, "duration": duration,
              "alerts": [{"alertname": a, "severity": s} for a, s in scenario.alerts],
              "restored": True}
    if as_json:
        emit_json(result)
    else:
        click.echo(f"done: {sent} sent; faults cleared and processes resumed")
