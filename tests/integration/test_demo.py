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
