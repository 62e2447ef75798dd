"""A producer service that does not install mailrelay: the README's "Hearing how each
message ended" block, verbatim but for the broker URL, as a Celery app of its own.

As a worker (it consumes ``billing.events``, the README's task handles the outcomes):
    BILLING_BROKER_URL=... BILLING_OUTCOMES=FILE \
        celery -A tests.integration.billing_service worker -Q billing.events -P solo
Every outcome task the worker receives, duplicates included, is appended to FILE as one
JSON line (its task id, its kwargs, and whether mailrelay got imported) before the
README's handler runs.

As a sender: BILLING_BROKER_URL=... python -m tests.integration.billing_service < messages.json
publishes each message of the JSON list as the README's block does and prints the task ids.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from celery import signals

from tests.integration.producer import readme_block

_BROKER = '"redis://127.0.0.1:6379/0"'


def _load() -> dict[str, Any]:
    """The block's set-up, app and task (everything before its send), run as printed."""
    block = readme_block("### Hearing how each message ended")
    assert _BROKER in block, "the example no longer names the broker as the test expects"
    setup = block.split("billing.send_task(", 1)[0]
    scope: dict[str, Any] = {"__name__": __name__}
    code = setup.replace(_BROKER, repr(os.environ["BILLING_BROKER_URL"]))
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102
    return scope


_scope = _load()
app = _scope["billing"]
app.conf.worker_hijack_root_logger = False


@signals.task_prerun.connect
def _record(task_id: str | None = None, task: Any = None, kwargs: Any = None, **_: Any) -> None:
    if task is None or task.name != "billing.mail_outcome":
        return
    line = json.dumps({"task_id": task_id, "kwargs": kwargs,
                       "mailrelay_imported": any(m.split(".")[0] == "mailrelay" for m in sys.modules)})
    with open(os.environ["BILLING_OUTCOMES"], "a", encoding="utf-8") as out:
        out.write(line + "\n")


def main() -> None:
    from kombu import Queue

    intake = Queue("mailrelay.intake", no_declare=True)
    ids = [app.send_task("mailrelay.send", queue=intake, kwargs={"message": message}).id
           for message in json.load(sys.stdin)]
    json.dump(ids, sys.stdout)


if __name__ == "__main__":
    main()
