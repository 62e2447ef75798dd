"""`mailrelay rollout ...`: move senders to a provider gradually, watch it, undo it.

Every change is recorded in the rollout's history with the operator (MAILRELAY_OPERATOR,
else the login name) and --reason, and applied only if nobody (the controller, another
operator) changed the rollout meanwhile. Percentages are percents (0.5, 25, 100).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click

from mailrelay import providers
from mailrelay.cli.exits import FAILED, NOT_FOUND, USAGE, Exit
from mailrelay.cli.output import dry_run_option, emit_json, json_option, table
from mailrelay.config import get_settings, operator_name
from mailrelay.rollout.policy import (
    MODES,
    SettingError,
    bp_to_percent,
    parse_codes,
    parse_ladder,
    percent_to_bp,
    policy_of,
)
from mailrelay.store import outbox, rollouts
from mailrelay.store.rollouts import RolloutRow

F = TypeVar("F", bound=Callable[..., Any])

provider_argument = click.argument("provider", type=click.Choice(providers.names()))
reason_option = click.option("--reason", metavar="TEXT", required=True,
                             help="Why; recorded in the rollout's history with your name.")


def _rollout() -> Any:
    """The rollout package, imported when a command runs, not when the CLI loads: it
    imports prometheus_client (its metrics), and `mailrelay worker` must choose the
    metrics' multiprocess storage before anything imports it (metrics_server.prepare)."""
    from mailrelay import rollout
    from mailrelay.rollout import controller, gate, manage  # noqa: F401  # loads the modules

    return rollout


@contextmanager
def _operator_errors() -> Iterator[None]:
    """The rollout layer's refusals as exit codes."""
    manage = _rollout().manage
    try:
        yield
    except SettingError as err:
        raise Exit(str(err), USAGE) from None
    except manage.NotFound as err:
        raise Exit(str(err), NOT_FOUND) from None
    except (manage.Conflict, manage.Refused) as err:
        raise Exit(str(err), FAILED) from None


def _reason(reason: str) -> str:
    if not reason.strip():
        raise Exit("--reason must say why: it is recorded with your name", USAGE)
    return reason.strip()


@click.group("rollout")
def command() -> None:
    """Move a provider's senders to it gradually; the controller promotes or rolls back.

    A sender (its account address) is admitted when its bucket (0-9999, a salted hash)
    is under the rollout's percentage; the others go through the fallback account, or
    are rejected with rollout_gated when there is none. See the README's "Rolling out a
    provider".
    """


def _parsed(parse: Callable[[Any], Any]) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A click callback: None stays None, anything else goes through ``parse``, whose
    SettingError becomes a usage error naming the option."""
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None:
            return None
        try:
            return parse(value)
        except SettingError as err:
            raise click.BadParameter(str(err)) from None

    return callback


def _domains(text: str) -> tuple[str, ...]:
    if text.strip().lower() == "none":
        return ()
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _none_or(text: str) -> str:
    return "" if text.strip().lower() == "none" else text.strip()


@command.command("set")
@provider_argument
@click.option("--percent", type=float, callback=_parsed(percent_to_bp),
              help="Share of senders admitted, 0-100 (two decimals at most). A new rollout "
                   "starts at the ladder's first step.")
@click.option("--mode", type=click.Choice(MODES),
              help="enforce, or dry_run: everyone admitted, decisions recorded, percentage fixed.")
@click.option("--internal-domains", metavar="D,D|none", callback=_parsed(_domains),
              help="Admit only messages whose every recipient is in these domains.")
@click.option("--fallback", metavar="ADDRESS|none", callback=_parsed(_none_or),
              help="Account that sends what the gate does not admit (From unchanged); none: "
                   "reject with rollout_gated.")
@click.option("--ladder", metavar="1,5,25,100", callback=_parsed(parse_ladder),
              help="Steps in percent, ascending. [default: 1,5,10,25,50,100]")
@click.option("--dwell", type=click.IntRange(0), metavar="S",
              help="Seconds at a step before a promotion. [default: 600]")
@click.option("--window", type=click.IntRange(5), metavar="S",
              help="Seconds of metrics each evaluation reads. [default: 300]")
@click.option("--error-warn", type=click.FloatRange(0, 1), metavar="R",
              help="Error ratio that holds promotion (warn). [default: 0.01]")
@click.option("--error-critical", type=click.FloatRange(0, 1), metavar="R",
              help="Error ratio that counts as a failure. [default: 0.05]")
@click.option("--latency-p95", type=click.FloatRange(0, min_open=True), metavar="S",
              help="p95 send time (seconds) that counts as a failure. [default: 10]")
@click.option("--min-rate", type=click.FloatRange(0, min_open=True), metavar="R",
              help="Sends per second below which an evaluation is inconclusive. [default: 0.1]")
@click.option("--consecutive-successes", type=click.IntRange(1), metavar="N",
              help="Healthy evaluations in a row before a promotion. [default: 5]")
@click.option("--failure-limit", type=click.IntRange(1), metavar="N",
              help="Failed measurements at a step that roll back. [default: 2]")
@click.option("--consecutive-error-limit", type=click.IntRange(1), metavar="N",
              help="Failed Prometheus queries in a row before it needs attention. [default: 4]")
@click.option("--error-codes", metavar="C,C", callback=_parsed(parse_codes),
              help="Codes that count as the provider's errors. [default: provider_unavailable,"
                   "provider_timeout,network_error,auth_expired,internal_error]")
@click.option("--salt", metavar="S", help="Bucketing salt; a new one reshuffles who is admitted.")
@reason_option
@dry_run_option
@json_option
def set_command(provider: str, percent: int | None, mode: str | None,
                internal_domains: tuple[str, ...] | None, fallback: str | None,
                ladder: tuple[int, ...] | None, dwell: int | None, window: int | None,
                error_warn: float | None, error_critical: float | None,
                latency_p95: float | None, min_rate: float | None,
                consecutive_successes: int | None, failure_limit: int | None,
                consecutive_error_limit: int | None, error_codes: tuple[str, ...] | None,
                salt: str | None, reason: str, dry_run: bool, as_json: bool) -> None:
    """Create PROVIDER's rollout, or change it. Audited with --reason. Exit 2 for a bad
    value or an unusable --fallback, 1 if the change does not apply (a percentage for an
    aborted rollout) or raced another change.

    --json prints a list of one object, as `rollout status --json`. --dry-run runs every
    check, writes nothing (no row, no history) and prints the rollout as it would be,
    each object with "dry_run": true.
    """
    given = {"ladder": ladder, "dwell_seconds": dwell, "window_seconds": window,
             "error_warn": error_warn, "error_critical": error_critical,
             "latency_p95": latency_p95, "min_rate": min_rate,
             "consecutive_successes": consecutive_successes, "failure_limit": failure_limit,
             "consecutive_error_limit": consecutive_error_limit, "error_codes": error_codes}
    if salt is not None and not salt.strip():
        raise Exit("--salt must not be empty", USAGE)
    changes = _rollout().manage.Changes(percent_bp=percent, mode=mode, internal_domains=internal_domains,
                      fallback=fallback, salt=salt.strip() if salt else None,
                      policy={k: v for k, v in given.items() if v is not None})
    with _operator_errors():
        row, created = _rollout().manage.set_rollout(provider, changes, actor=_operator(),
                                                     reason=_reason(reason), preview=dry_run)
    _show_rows([row], as_json, title=("would be " if dry_run else "")
               + ("created" if created else "changed") + (" (dry run)" if dry_run else ""),
               dry_run=dry_run)


def _operator() -> str:
    return operator_name(get_settings())


def status_dict(row: RolloutRow, last: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "provider": row.provider, "mode": row.mode, "state": row.state,
        "percent": bp_to_percent(row.percent_bp), "fallback": row.fallback,
        "internal_domains": list(row.internal_domains),
        "last_decision": {"decision": last["decision"], "reason": last["reason"],
                          "at": last["at"]} if last else None,
        "needs_attention": row.query_errors >= row.consecutive_error_limit,
        "ladder": [bp_to_percent(step) for step in row.ladder], "dwell": row.dwell_seconds,
        "window": row.window_seconds, "error_warn": row.error_warn,
        "error_critical": row.error_critical, "latency_p95": row.latency_p95,
        "min_rate": row.min_rate, "consecutive_successes": row.consecutive_successes,
        "failure_limit": row.failure_limit, "consecutive_error_limit": row.consecutive_error_limit,
        "error_codes": list(policy_of(row).error_codes),
        "successes": row.successes, "failures": row.failures, "query_errors": row.query_errors,
        "step_started_at": row.step_started_at.isoformat(),
        "last_evaluated_at": row.last_evaluated_at.isoformat() if row.last_evaluated_at else None,
        "salt": row.salt, "version": row.version,
    }


def _show_rows(rows: list[RolloutRow], as_json: bool, title: str = "rollouts", *,
               dry_run: bool = False) -> None:
    last = rollouts.last_decisions()
    shown = [status_dict(row, last.get(row.provider)) for row in rows]
    if dry_run:
        shown = [{**item, "dry_run": True} for item in shown]
    if as_json:
        emit_json(shown)
        return
    if not shown:
        click.echo("no rollouts: every sender is admitted to its provider")
        return
    for item in shown:
        decision = item["last_decision"] or {}
        item["last"] = f"{decision.get('decision', '')} {decision.get('at', '')[:19]}".strip()
        item["ladder"] = ",".join(f"{step:g}" for step in item["ladder"])
        item["internal_domains"] = ",".join(item["internal_domains"])
        item["attention"] = "NEEDS ATTENTION" if item["needs_attention"] else ""
    table(shown, ["provider", "mode", "state", "percent", "fallback", "internal_domains",
                  "ladder", "successes", "failures", "last", "attention"], title=title)
    for item in shown:
        if item["last_decision"]:
            click.echo(f"{item['provider']}: {item['last_decision']['reason']}")


@command.command("status")
@click.argument("provider", required=False, type=click.Choice(providers.names()))
@json_option
def status(provider: str | None, as_json: bool) -> None:
    """Show every rollout (or PROVIDER's) and its last decision."""
    rows = rollouts.all_rollouts()
    if provider:
        rows = [row for row in rows if row.provider == provider]
        if not rows:
            raise Exit(f"no rollout for {provider}", NOT_FOUND)
    _show_rows(rows, as_json)


@command.command("evaluate")
@click.argument("provider", required=False, type=click.Choice(providers.names()))
@click.option("--dry-run", is_flag=True, help="Measure and decide; change nothing.")
@json_option
def evaluate(provider: str | None, dry_run: bool, as_json: bool) -> None:
    """Evaluate every running rollout (or PROVIDER's) now, as the controller does each minute.

    Prints each decision, its reason, what it read from Prometheus (traffic in sends/s,
    error ratio, p95 in seconds) and the percentage before and after.
    """
    from mailrelay.tasks.routing import enqueue_delivery

    if provider and rollouts.get(provider) is None:
        raise Exit(f"no rollout for {provider}", NOT_FOUND)
    results = [r.as_dict() for r in _rollout().controller.evaluate(provider, dry_run=dry_run,
                                                         enqueue=enqueue_delivery)]
    if as_json:
        emit_json(results)
        return
    if not results:
        click.echo("no rollouts")
        return
    for item in results:
        item.update(item["inputs"])
        item["percent"] = f"{item['percent_before']:g} → {item['percent_after']:g}"
    table(results, ["provider", "decision", "percent", "traffic", "error_ratio", "latency_p95",
                    "applied", "reason"], title="evaluation" + (" (dry run)" if dry_run else ""))


@command.command("pause")
@provider_argument
@reason_option
@dry_run_option
@json_option
def pause(provider: str, reason: str, dry_run: bool, as_json: bool) -> None:
    """Stop the controller changing PROVIDER's rollout; the gate keeps its percentage.
    Exit 3 if there is no rollout, 1 if it is not running.

    --json prints {"provider", "state", "percent"}; --dry-run checks the same, changes
    nothing and prints what it would leave, plus "dry_run": true.
    """
    with _operator_errors():
        row = _rollout().manage.pause(provider, actor=_operator(), reason=_reason(reason),
                                      preview=dry_run)
    _done(provider, row.state, row.percent_bp, as_json,
          f"{provider}: paused at {bp_to_percent(row.percent_bp):g}%", dry_run=dry_run)


def _done(provider: str, state: str, percent_bp: int, as_json: bool, words: str, *,
          dry_run: bool = False) -> None:
    """What a change left: one line, or with --json the rollout's provider, state, percent
    (and ``dry_run``: true when it is only what the change would leave)."""
    _would(as_json, {"provider": provider, "state": state, "percent": bp_to_percent(percent_bp),
                     **({"dry_run": True} if dry_run else {})},
           f"would be {words} (dry run; nothing changed)" if dry_run else words)


def _would(as_json: bool, data: dict[str, Any], words: str) -> None:
    if as_json:
        emit_json(data)
    else:
        click.echo(words)


@command.command("resume")
@provider_argument
@click.option("--percent", type=float, callback=_parsed(percent_to_bp),
              help="Start again here (from aborted the default is the ladder's first step).")
@reason_option
@dry_run_option
@json_option
def resume(provider: str, percent: int | None, reason: str, dry_run: bool, as_json: bool) -> None:
    """Hand a paused or aborted rollout back to the controller. Exit 3 if there is no
    rollout, 1 if it is not paused or aborted.

    --json prints {"provider", "state", "percent"}; --dry-run checks the same, changes
    nothing and prints what it would leave, plus "dry_run": true.
    """
    with _operator_errors():
        row = _rollout().manage.resume(provider, actor=_operator(), reason=_reason(reason),
                                       percent_bp=percent, preview=dry_run)
    _done(provider, row.state, row.percent_bp, as_json,
          f"{provider}: running at {bp_to_percent(row.percent_bp):g}%", dry_run=dry_run)


@command.command("rollback")
@provider_argument
@reason_option
@dry_run_option
@json_option
def rollback(provider: str, reason: str, dry_run: bool, as_json: bool) -> None:
    """Take every sender off PROVIDER now (0%, aborted) and move waiting messages that
    never reached it to the fallback. Messages that may have reached it stay with it.
    Exit 3 if there is no rollout.

    --json prints {"provider", "state", "percent", "fallback", "rerouted", "unfit",
    "not_enqueued"}. --dry-run changes, moves and enqueues nothing: "rerouted" is how many
    waiting messages would move, "unfit" how many would stay, plus "dry_run": true.
    """
    from mailrelay.tasks.routing import enqueue_delivery

    with _operator_errors():
        row, moved = _rollout().manage.rollback(provider, actor=_operator(), reason=_reason(reason),
                                                enqueue=enqueue_delivery, preview=dry_run)
    result = {"provider": provider, "state": row.state, "percent": bp_to_percent(row.percent_bp),
              "fallback": row.fallback, "rerouted": moved.moved, "unfit": moved.unfit,
              "not_enqueued": moved.not_enqueued, **({"dry_run": True} if dry_run else {})}
    if as_json:
        emit_json(result)
        return
    if dry_run:
        click.echo(f"{provider}: would roll back to 0% (aborted) and move {moved.moved} waiting "
                   f"messages to the fallback ({moved.unfit} do not fit it); nothing changed")
        return
    click.echo(f"{provider}: rolled back to 0% (aborted); {moved.moved} waiting messages moved "
               f"to the fallback" + (f", {moved.unfit} do not fit it and stay" if moved.unfit else ""))
    if not row.fallback:
        click.echo("no fallback: new messages of its senders are rejected with rollout_gated")
    if moved.not_enqueued:
        click.echo(f"{moved.not_enqueued} could not be enqueued; the reconciler will", err=True)


@command.command("history")
@click.argument("provider", required=False, type=click.Choice(providers.names()))
@click.option("--limit", type=click.IntRange(1, 100_000), default=20, show_default=True,
              help="At most N entries, newest first.")
@json_option
def history(provider: str | None, limit: int, as_json: bool) -> None:
    """Decisions and changes, newest first: who, why, what was read, percent before/after."""
    rows = rollouts.decisions(provider, limit=limit)
    for row in rows:
        row["percent_before"] = bp_to_percent(row["percent_before"])
        row["percent_after"] = bp_to_percent(row["percent_after"])
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no decisions")
        return
    table(rows, ["at", "provider", "decision", "percent_before", "percent_after", "state_after",
                 "dry_run", "actor", "reason"], title="rollout history (newest first)")


@command.command("remove")
@provider_argument
@reason_option
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@dry_run_option
@json_option
def remove(provider: str, reason: str, yes: bool, dry_run: bool, as_json: bool) -> None:
    """Delete PROVIDER's rollout: every sender is admitted to it again. History stays.
    Exit 3 if there is no rollout, 2 without --yes and without a terminal (also with
    --dry-run, which asks nothing in a terminal).

    --json prints {"provider", "state": "removed", "percent"} (the percent it had);
    --dry-run deletes nothing and prints the same, plus "dry_run": true.
    """
    reason = _reason(reason)
    # Refused the same with --dry-run: the same input exits with the same code.
    if not yes and not sys.stdin.isatty():
        raise Exit("removing a rollout admits every sender; pass --yes without a terminal",
                   USAGE)
    if not yes and not dry_run:
        click.confirm(f"Remove the {provider} rollout and admit every sender?", abort=True, err=True)
    with _operator_errors():
        row = _rollout().manage.remove(provider, actor=_operator(), reason=reason, preview=dry_run)
    _done(provider, "removed", row.percent_bp, as_json,
          f"{provider}: rollout removed (it was {row.state} at "
          f"{bp_to_percent(row.percent_bp):g}%); every sender is admitted", dry_run=dry_run)


@command.command("which")
@click.argument("address")
@click.option("--to", "recipients", multiple=True, metavar="RCPT",
              help="A recipient (repeat the option); checked against the internal domains.")
@json_option
def which(address: str, recipients: tuple[str, ...], as_json: bool) -> None:
    """The route a message from ADDRESS would take now, and why."""
    from mailrelay.addressing import parse_mailbox
    from mailrelay.errors import ValidationError

    try:
        domains = [parse_mailbox(r, "to").domain for r in recipients] if recipients else None
    except ValidationError as err:
        raise Exit(f"--to: {err.detail}", USAGE) from None
    account = outbox.find_account(address.strip().lower())
    if account is None:
        raise Exit(f"no account {address.strip()}", NOT_FOUND)
    row = rollouts.get(account.provider)
    chosen = _rollout().gate.decide_route(row, account.address, account.provider, domains)
    info = chosen.info or {}
    result = {"address": account.address, "account_provider": account.provider,
              "rollout": row is not None, "decision": chosen.decision,
              "would": info.get("would"),
              "reason": info.get("reason", f"no rollout for {account.provider}: admitted"),
              "provider": chosen.provider, "via": chosen.via.address if chosen.via else None,
              "bucket": info.get("bucket"), "percent": info.get("percent"),
              "internal_domains": info.get("internal_domains", []),
              "recipients_internal": info.get("recipients_internal")}
    if as_json:
        emit_json(result)
        return
    through = f" through {result['via']}" if result["via"] else ""
    click.echo(f"{account.address}: {result['decision']} → {result['provider']}{through}")
    click.echo(f"why: {result['reason']}")
