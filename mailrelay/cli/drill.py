"""`mailrelay drill`: practise on-call against the demo system, and score it.

A drill breaks something the way production breaks (through the emulator: a revoked
grant, a provider throttling), sends traffic, and tells on-call what they should see:
the alert and the command that shows it. Then it waits while the runbook is followed
and scores three moments, in seconds from the start:

- **detected**: the drill's alert fires in Prometheus (`ALERTS{alertstate="firing"}`);
- **mitigated**: the system is in the state the runbook's fix leaves (the account
  reconnected, the sender slowed down);
- **verified**: every message the drill sent ended `sent` and the alert is quiet again.

It needs `mailrelay demo --monitoring` running (its stack file names the emulator,
Prometheus and the senders). On exit, Ctrl-C included, it clears the faults it made and
restores what it changed. Exit 0 when all three happened within ``--timeout``, 1 if not.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import requests

from mailrelay.cli.exits import FAILED, USAGE, Exit
from mailrelay.cli.output import emit_json, json_option, table
from mailrelay.cli.scenarios import STACK_SETTINGS, load_stack, sending_endpoint, stack_option

# Final states: a drill message in any other is still on its way.
_FINAL = {"sent", "failed", "rejected"}


@dataclass
class Run:
    """One drill's run: what it acts on and what it has sent."""

    stack: dict[str, Any]
    provider: str
    emulator: Any
    prometheus: str
    # How many messages the drill sends at its start.
    messages: int
    requests: list[str] = field(default_factory=list)
    restore: dict[str, Any] = field(default_factory=dict)

    @property
    def sender(self) -> str:
        return str(self.stack["senders"][self.provider])

    def send(self, count: int) -> None:
        from mailrelay.celery_app import INTAKE_QUEUE, SEND_TASK, app

        for _ in range(count):
            task_id = str(uuid.uuid4())
            n = len(self.requests)
            app.send_task(SEND_TASK, task_id=task_id, queue=INTAKE_QUEUE, kwargs={"message": {
                "from": self.sender, "to": [f"drill-{n}@example.org"], "subject": f"drill {n}",
                "text": "Sent by mailrelay drill.", "metadata": {"drill": "1"}}})
            self.requests.append(task_id)

    def states(self) -> Counter[str]:
        from mailrelay.store.oncall import states_by_request

        found = states_by_request(self.requests)
        return Counter(found.get(task_id, "not stored yet") for task_id in self.requests)

    def all_sent(self) -> bool:
        return bool(self.requests) and self.states() == Counter({"sent": len(self.requests)})

    def firing(self, alert: str) -> bool:
        """Whether ``alert`` fires now for this drill's provider (or without a provider)."""
        answer = requests.get(f"{self.prometheus}/api/v1/query", timeout=10, params={
            "query": f'ALERTS{{alertname="{alert}", alertstate="firing"}}'})
        answer.raise_for_status()
        return any(series["metric"].get("provider", self.provider) == self.provider
                   for series in answer.json()["data"]["result"])

    def account(self) -> Any:
        from mailrelay.store.accounts import row_of

        return row_of(self.sender)


@dataclass(frozen=True)
class Drill:
    name: str
    provider: str
    summary: str
    # The alert that tells on-call, and its runbook page (and this drill's walk-through).
    alert: str
    runbook: str
    # What on-call runs to see it.
    look: tuple[str, ...]
    start: Callable[[Run], None]
    # The fault has taken hold (a fix before that would be no fix): only then can it be
    # mitigated.
    broken: Callable[[Run], bool]
    mitigated: Callable[[Run], bool]
    # Called once when it is mitigated: the world gets better (the provider stops throttling).
    relieve: Callable[[Run], None]
    undo: Callable[[Run], None]
    messages: int = 6


def _revoke(run: Run) -> None:
    run.emulator.revoke(email=run.sender)
    run.emulator.expire_tokens(run.sender)  # or a cached access token hides the revocation
    run.send(run.messages)


def _needs_reconnect(run: Run) -> bool:
    return str(run.account().state) == "reauth_required"


def _reconnected(run: Run) -> bool:
    return str(run.account().state) == "active"


def _throttle(run: Run) -> None:
    run.restore["rate_limit_per_minute"] = run.account().rate_limit_per_minute
    run.emulator.inject(endpoint=sending_endpoint(run.provider), status=429, retry_after=5,
                        probability=0.6)
    run.send(run.messages)


def _slowed_down(run: Run) -> bool:
    limit = run.account().rate_limit_per_minute
    before = run.restore.get("rate_limit_per_minute")
    return limit is not None and (before is None or limit < before)


def _stop_throttling(run: Run) -> None:
    run.emulator.clear_faults()


def _restore_rate(run: Run) -> None:
    run.emulator.clear_faults()
    if "rate_limit_per_minute" in run.restore:
        from mailrelay.store.accounts import configure

        configure(run.sender, rate_limit_per_minute=run.restore["rate_limit_per_minute"])


def _nothing(run: Run) -> None:
    return None


CATALOG = (
    Drill("revoked-grant", "microsoft",
          "the Microsoft 365 user revoked mailrelay's grant: sends park with auth_revoked",
          "MailrelayAccountsNeedReconnect", "runbooks/drills.md#revoked-grant",
          ("mailrelay accounts list", "mailrelay accounts check ADDRESS"),
          start=_revoke, broken=_needs_reconnect, mitigated=_reconnected, relieve=_nothing, undo=_nothing),
    Drill("throttled", "gmail",
          "Gmail answers 6 sends in 10 with 429 (a sender over its quota)",
          "MailrelayProviderErrorRatio", "runbooks/drills.md#throttled",
          ("mailrelay failed --provider gmail --since 1h", "mailrelay accounts list"),
          start=_throttle, broken=lambda run: True, mitigated=_slowed_down,
          relieve=_stop_throttling, undo=_restore_rate, messages=40),
)


def find(name: str) -> Drill:
    for drill in CATALOG:
        if drill.name == name:
            return drill
    raise Exit(f"no drill {name!r}; drills: {', '.join(d.name for d in CATALOG)}", USAGE)


def score(drill: Drill, run: Run, *, timeout: float, poll: float,
          say: Callable[[str], None]) -> dict[str, Any]:
    """Start the drill, then watch for detected, mitigated and verified; the score."""
    started = time.monotonic()
    moments: dict[str, float | None] = {"detected": None, "mitigated": None, "verified": None}
    broken = False

    def mark(what: str, words: str) -> None:
        moments[what] = round(time.monotonic() - started, 1)
        say(f"[{moments[what]:6.1f}s] {what}: {words}")

    try:
        drill.start(run)
        say(f"[{0.0:6.1f}s] started: {drill.summary}; {len(run.requests)} messages sent")
        while time.monotonic() - started < timeout:
            firing = run.firing(drill.alert)
            if moments["detected"] is None and firing:
                mark("detected", f"{drill.alert} fires")
            broken = broken or drill.broken(run)
            if broken and moments["mitigated"] is None and drill.mitigated(run):
                mark("mitigated", "the fix is in place")
                drill.relieve(run)
            if (moments["mitigated"] is not None and moments["detected"] is not None
                    and not firing and run.all_sent()):
                mark("verified", f"every drill message sent, {drill.alert} quiet")
                break
            time.sleep(poll)
    finally:
        drill.undo(run)  # Ctrl-C included
    return {"drill": drill.name, "provider": drill.provider, "alert": drill.alert,
            "runbook": drill.runbook, "messages": len(run.requests),
            "states": dict(run.states()), **moments,
            "passed": None not in moments.values()}


@click.group("drill")
def command() -> None:
    """Practise on-call against the demo system: break something, follow the runbook, get
    a score (detected, mitigated, verified)."""


@command.command("list")
@json_option
def list_command(as_json: bool) -> None:
    """Each drill: what breaks, the alert on-call should see, the runbook to follow."""
    rows = [{"name": d.name, "provider": d.provider, "what": d.summary, "alert": d.alert,
             "runbook": d.runbook} for d in CATALOG]
    if as_json:
        emit_json(rows)
    else:
        table(rows, ["name", "provider", "what", "alert", "runbook"], title="drills")


@command.command("run")
@click.argument("name")
@click.option("--timeout", type=click.FloatRange(10, 86400), default=1800.0, show_default=True,
              metavar="S", help="Give up (exit 1) after this many seconds.")
@click.option("--poll", type=click.FloatRange(0.2, 60), default=2.0, show_default=True,
              metavar="S", help="Seconds between looks at Prometheus and the outbox.")
@stack_option
@click.option("--dry-run", is_flag=True, help="Say what the drill would do; start nothing.")
@json_option
def run_command(name: str, timeout: float, poll: float, stack_path: Path, dry_run: bool,
                as_json: bool) -> None:
    """Run drill NAME against the running demo and score how on-call handled it."""
    drill = find(name)
    say: Callable[[str], None] = (lambda line: click.echo(line, err=True)) if as_json \
        else click.echo
    say(f"drill {drill.name} ({drill.provider}): {drill.summary}")
    say(f"  expect: {drill.alert} (Prometheus, then Alertmanager)")
    for line in drill.look:
        say(f"  look:   {line}")
    say(f"  follow: {drill.runbook}")
    if dry_run:
        if as_json:
            emit_json({"drill": drill.name, "dry_run": True, "alert": drill.alert,
                       "runbook": drill.runbook})
        return
    stack = load_stack(stack_path)
    if "monitoring" not in stack:
        raise Exit(f"{stack_path} has no Prometheus: run `mailrelay demo --monitoring`", USAGE)
    if drill.provider not in stack["senders"]:
        raise Exit(f"the running system has no {drill.provider} sender", USAGE)
    os.environ.update({k: v for k, v in stack["env"].items() if k in STACK_SETTINGS})
    from mailrelay.config import get_settings
    from mailrelay.emulator.client import EmulatorClient

    get_settings.cache_clear()
    emulator = EmulatorClient(stack["emulator"]["url"], verify=stack["emulator"]["bundle"])
    run = Run(stack, drill.provider, emulator, stack["monitoring"]["prometheus"], drill.messages)
    result = score(drill, run, timeout=timeout, poll=poll, say=say)
    if as_json:
        emit_json(result)
    else:
        rows = [{"step": step, "seconds": "-" if result[step] is None else f"{result[step]:.1f}"}
                for step in ("detected", "mitigated", "verified")]
        table(rows, ["step", "seconds"], title=f"drill {drill.name}")
    if not result["passed"]:
        raise Exit(f"drill {drill.name} not completed within {timeout:.0f} s "
                   f"(messages: {result['states']})", FAILED)
