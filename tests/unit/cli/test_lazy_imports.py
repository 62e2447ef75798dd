"""Loading the `mailrelay` command imports no prometheus_client: `mailrelay worker` must
pick the metrics' multiprocess directory before anything imports it, or a worker with
MAILRELAY_METRICS_PORT refuses to start (metrics_server.prepare)."""

from __future__ import annotations

import subprocess
import sys


def test_loading_the_command_line_leaves_prometheus_client_unimported() -> None:
    code = "import sys, mailrelay.cli; print('prometheus_client' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "False"
