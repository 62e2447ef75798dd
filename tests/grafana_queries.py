"""Every query of monitoring/grafana's dashboards, with the template variables filled in
as Grafana would, so that tests can run them against a real Prometheus."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DASHBOARDS = Path(__file__).resolve().parents[1] / "monitoring" / "grafana" / "dashboards"
# Grafana's built-in intervals, at what a one-hour view would give.
BUILT_INS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}


@dataclass(frozen=True)
class Query:
    dashboard: str
    panel: str
    expr: str


def dashboards() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside rows too."""
    found = []
    for panel in dashboard.get("panels", []):
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def substitute(expr: str, provider: str) -> str:
    for name, value in BUILT_INS.items():
        expr = expr.replace(name, value)
    # `provider=~"$provider"` (multi-value): a regex of the one provider chosen.
    return re.sub(r"\$\{?provider(?::regex)?\}?", re.escape(provider), expr)


def panel_queries(provider: str = "gmail") -> list[Query]:
    queries = []
    for path in dashboards():
        board = json.loads(path.read_text())
        for panel in panels(board):
            for target in panel.get("targets", []):
                expr = substitute(target.get("expr", ""), provider)
                if "$" in expr:
                    raise ValueError(f"{board['title']} / {panel.get('title')}: "
                                     f"unknown variable in {expr!r}")
                queries.append(Query(board["title"], str(panel.get("title")), expr))
    return queries
