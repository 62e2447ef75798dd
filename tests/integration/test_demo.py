"""`mailrelay demo --once`, the README's first command, on embedded defaults (SQLite)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_demo_once_passes_and_leaves_no_process(tmp_path: Path, clean_redis: None) -> None:
    # Embedded defaults: no database URL, no secret key, no Flower login given.
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAILRELAY_DATABASE_URL", "MAILRELAY_SECRET_KEY", "MAILRELAY_FLOWER_AUTH")}
    out = subprocess.run([sys.executable, "-m", "mailrelay.cli", "demo", "--once",
                          "--workdir", str(tmp_path / "demo")], env=env, capture_output=True,
                         text=True, timeout=240, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "sqlite:///" in out.stdout
    assert out.stdout.count(" yes ") == 11 and " NO " not in out.stdout
    assert "/inbox" in out.stdout and "flower:" in out.stdout
    assert (tmp_path / "demo" / "mailrelay.db").exists()
    assert _processes_in(tmp_path / "demo") == []


def _processes_in(directory: Path) -> list[int]:
    """Processes whose working directory is ``directory`` (the demo starts its children there)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if Path(os.readlink(proc / "cwd")) == directory:
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_demo_with_monitoring_runs_the_stack_and_describes_it(tmp_path: Path, clean_redis: None) -> None:
    """`--monitoring`: Prometheus, Alertmanager and Pushgateway beside one worker per
    profile; every worker, beat and the gateway scraped; the stack file scenarios read."""
    import json

    import workers

    env = {k: v for k, v in os.environ.items()
           if k not in ("MAILRELAY_DATABASE_URL", "MAILRELAY_SECRET_KEY", "MAILRELAY_FLOWER_AUTH")}
    out = subprocess.run([sys.executable, "-m", "mailrelay.cli", "demo", "--once", "--monitoring",
                          "--workdir", str(tmp_path / "demo")], env=env, capture_output=True,
                         text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    profiles = [name for name in workers.names() if name != "all"]
    scraped = len(profiles) + 2  # the workers, beat, the Pushgateway
    assert f"({scraped}/{scraped} targets up" in out.stdout, out.stdout
    for name in ("prometheus:", "alertmanager:", "pushgateway:", "mailrelay scenarios run"):
        assert name in out.stdout
    stack = json.loads((tmp_path / "demo" / "stack.json").read_text())
    assert set(stack["monitoring"]) == {"prometheus", "alertmanager", "pushgateway"}
    assert {queue for queue in stack["serves"] if queue != "beat"} == {
        queue for name in profiles for queue in workers.load(name).queues}
    assert "MAILRELAY_SECRET_KEY" not in stack["env"]
    assert _processes_in(tmp_path / "demo") == []
