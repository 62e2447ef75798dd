"""monitoring/grafana: dashboards complete and about mailrelay's own metrics, provisioning
that loads them, and every query accepted by a real Prometheus. (That each returns data
after real traffic is checked in tests/integration/test_alerting.py.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import requests
import yaml

from tests.grafana_queries import DASHBOARDS, dashboards, panel_queries, panels
from tests.prometheus import Prometheus

ROOT = Path(__file__).resolve().parents[3]
PROVISIONING = ROOT / "monitoring" / "grafana" / "provisioning"
EXPECTED = {"mailrelay-overview", "mailrelay-provider", "mailrelay-rollout", "mailrelay-errors"}


def known_names() -> set[str]:
    """Metric families the code declares or the export pushes, and the recording rules."""
    from prometheus_client import REGISTRY

    import mailrelay.metrics  # noqa: F401  # registers them

    names = set()
    for family in REGISTRY.collect():
        names |= {family.name, f"{family.name}_total", f"{family.name}_bucket"}
    source = (ROOT / "mailrelay" / "export.py").read_text()
    names |= set(re.findall(r'"(mailrelay_[a-z_]+)"', source))
    for path in (ROOT / "monitoring" / "prometheus" / "rules").glob("*.yml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            names |= {rule["record"] for rule in group["rules"] if "record" in rule}
    return names


def test_the_four_dashboards_are_complete() -> None:
    boards = {path.stem: json.loads(path.read_text()) for path in dashboards()}
    assert set(boards) == EXPECTED
    for name, board in boards.items():
        assert board["uid"] == name and board["title"] and "mailrelay" in board["tags"]
        variables = {v["name"] for v in board["templating"]["list"]}
        assert "datasource" in variables
        ids = [panel["id"] for panel in panels(board)]
        assert len(ids) == len(set(ids)), name
        for panel in panels(board):
            assert panel["title"] and panel["description"], (name, panel["id"])
            assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"])
            assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])


def test_every_query_uses_only_mailrelay_s_metrics_and_no_identity() -> None:
    known = known_names() | {"up", "ALERTS"}
    for query in panel_queries():
        for name in re.findall(r"\b([a-z_]*:?mailrelay_[a-z0-9_:]+|ALERTS)\b", query.expr):
            assert name in known, f"{query.dashboard} / {query.panel}: unknown {name}"
        for word in ("address", "message_id", "recipient", "subject"):
            assert word not in query.expr, query


def test_provisioning_loads_the_dashboards_and_the_datasource() -> None:
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "mailrelay.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"] == "/var/lib/grafana/dashboards"
    sources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus" and source["url"].startswith("http://prometheus:")
    assert DASHBOARDS.name == "dashboards"


def test_every_query_parses_in_a_real_prometheus(prometheus: Prometheus) -> None:
    failures = []
    for query in panel_queries():
        answer = requests.get(f"{prometheus.url}/api/v1/query", params={"query": query.expr},
                              timeout=10).json()
        if answer.get("status") != "success":
            failures.append(f"{query.dashboard} / {query.panel}: {answer.get('error')}")
    assert failures == []
