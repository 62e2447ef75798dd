"""The benchmark's figures: rounds, their medians and percentiles, the targets, the table."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import click

from mailrelay.cli.output import table

# What the issue that set them asks of mailrelay (see the README's Benchmark section).
TARGETS = {"ratio": (">=", 0.9), "cpu_ms_added": ("<=", 1.0), "overhead_p99_ms": ("<", 15.0),
           "intake_per_s": (">=", 1000.0), "herd_token_requests": ("==", 1)}


@dataclass
class Round:
    per_s: float
    cpu_ms: float | None
    # Each process tree's share of cpu_ms (worker, postgres, redis).
    cpu_parts: dict[str, float] = field(default_factory=dict)


@dataclass
class Sample:
    """Every round's figures at one latency."""

    latency_ms: int
    bare: list[Round] = field(default_factory=list)
    relay: list[Round] = field(default_factory=list)
    overhead_ms: list[float] = field(default_factory=list)
    # Rounds of messages that carry a ``notify`` (bench --notify): the outcome published too.
    notify: list[Round] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        bare = statistics.median(r.per_s for r in self.bare)
        relay = statistics.median(r.per_s for r in self.relay)
        cpu_bare, cpu_relay = median_cpu(self.bare), median_cpu(self.relay)
        added = None if cpu_bare is None or cpu_relay is None else round(cpu_relay - cpu_bare, 3)
        summary = {"latency_ms": self.latency_ms, "ratio": round(relay / bare, 3),
                   "bare_per_s": round(bare, 1), "mailrelay_per_s": round(relay, 1),
                   "overhead_ms": _percentiles(self.overhead_ms),
                   "cpu_ms_per_send": {"bare": cpu_bare, "mailrelay": cpu_relay, "added": added},
                   "cpu_ms_by_process": {"bare": median_parts(self.bare),
                                         "mailrelay": median_parts(self.relay)}}
        if self.notify:
            notified = statistics.median(r.per_s for r in self.notify)
            cpu_notify = median_cpu(self.notify)
            summary["notify"] = {
                "per_s": round(notified, 1), "ratio_to_mailrelay": round(notified / relay, 3),
                "ratio": round(notified / bare, 3), "cpu_ms_per_send": cpu_notify,
                "cpu_ms_added": None if cpu_notify is None or cpu_relay is None
                else round(cpu_notify - cpu_relay, 3),
                "cpu_ms_by_process": median_parts(self.notify)}
        return summary


def median_cpu(rounds: list[Round]) -> float | None:
    values = [r.cpu_ms for r in rounds if r.cpu_ms is not None]
    return round(statistics.median(values), 3) if values else None


def median_parts(rounds: list[Round]) -> dict[str, float]:
    names = sorted({name for r in rounds for name in r.cpu_parts})
    return {name: round(statistics.median(r.cpu_parts.get(name, 0.0) for r in rounds), 3)
            for name in names}


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if len(values) < 2:
        return {"p50": values[0] if values else None, "p99": values[0] if values else None}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": round(cuts[49], 2), "p99": round(cuts[98], 2)}


def targets(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    values = {"ratio": result["ratio"], "cpu_ms_added": result["cpu_ms_per_send"]["added"],
              "overhead_p99_ms": result["overhead_ms"]["p99"],
              "intake_per_s": result["intake_per_s"],
              "herd_token_requests": result["herd_token_requests"]}
    checks: dict[str, Callable[[float, float], bool]] = {
        ">=": lambda v, t: v >= t, "<=": lambda v, t: v <= t, "<": lambda v, t: v < t,
        "==": lambda v, t: v == t}
    return {name: {"target": f"{op} {bound:g}", "value": values[name],
                   "met": None if values[name] is None else checks[op](values[name], bound)}
            for name, (op, bound) in TARGETS.items()}


def print_table(result: dict[str, Any]) -> None:
    settings = result["settings"]
    rows = []
    for sample in result["by_latency"]:
        cpu = sample["cpu_ms_per_send"]
        rows.append({"measure": f"deliveries/s at {sample['latency_ms']} ms",
                     "value": f"bare {sample['bare_per_s']}, mailrelay {sample['mailrelay_per_s']}"
                              f" (ratio {sample['ratio']})", "target": "ratio >= 0.9"})
        rows.append({"measure": f"overhead per send at {sample['latency_ms']} ms",
                     "value": f"p50 {sample['overhead_ms']['p50']} ms, "
                              f"p99 {sample['overhead_ms']['p99']} ms", "target": "p99 < 15 ms"})
        rows.append({"measure": f"CPU per send at {sample['latency_ms']} ms",
                     "value": f"bare {cpu['bare']} ms, mailrelay {cpu['mailrelay']} ms "
                              f"(+{cpu['added']})", "target": "added <= 1.0 ms"})
        notify = sample.get("notify")
        if notify:
            rows.append({"measure": f"with notify at {sample['latency_ms']} ms",
                         "value": f"{notify['per_s']}/s ({notify['ratio_to_mailrelay']} of "
                                  f"mailrelay without), CPU {notify['cpu_ms_per_send']} ms "
                                  f"(+{notify['cpu_ms_added']})", "target": "-"})
    cpu = result["cpu_ms_per_send"]
    rows.append({"measure": "intake (accepted sends/s)",
                 "value": f"{result['intake_per_s']} ({cpu['intake']} ms CPU each); a task that "
                          f"only routes: {result['intake_bare_per_s']} ({cpu['intake_bare']} ms)",
                 "target": ">= 1000"})
    if result["herd_token_requests"] is not None:
        rows.append({"measure": "token herd", "value": f"{result['herd_token_requests']} token "
                     f"requests for {result['herd_sends']} sends", "target": "1"})
    rows.append({"measure": "worker RSS (largest process)",
                 "value": f"{result['worker_rss_mb']['max']} MB", "target": "-"})
    missed = [name for name, t in result["targets"].items() if t["met"] is False]
    table(rows, ["measure", "value", "target"],
          title=f"mailrelay bench ({settings['provider']}, {settings['database']}, "
                f"{settings['messages']} x {settings['rounds']} rounds, CPU of "
                f"{', '.join(result['cpu_counted'])})")
    click.echo("targets missed: " + ", ".join(missed) if missed else "every target met")
