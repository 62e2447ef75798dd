"""A producer that does not import mailrelay: a bare Celery app publishing `mailrelay.send`
with the README's own snippet ("Sending"), so that the snippet is what the tests run.

Usage: python producer.py BROKER_URL < messages.json   (a JSON list; prints task ids)
       python producer.py BROKER_URL --readme          (the snippet as printed; prints its id)
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parents[2] / "README.md"
_BROKER = '"redis://127.0.0.1:6379/0"'


def readme_block(after: str) -> str:
    """The first Python block of the README after the text ``after``, verbatim."""
    text = README.read_text()
    start = text.index(after)
    found = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert found, f"the README's Python block after {after!r} is gone"
    return found.group(1)


def readme_snippet() -> str:
    """The README's producer block, verbatim."""
    return readme_block("From a service that does not install mailrelay")


def run(code: str, broker_url: str) -> dict[str, Any]:
    assert _BROKER in code, "the snippet no longer names the broker as the test expects"
    scope: dict[str, Any] = {}
    exec(compile(code.replace(_BROKER, repr(broker_url)), "README.md", "exec"), scope)  # noqa: S102
    return scope


def main() -> None:
    broker_url = sys.argv[1]
    snippet = readme_snippet()
    if sys.argv[2:] == ["--readme"]:
        # Every line as printed, its send included: the id is the last task sent.
        setup, send = snippet.split("producer.send_task(", 1)
        scope = run(setup + "result = producer.send_task(" + send, broker_url)
        json.dump([scope["result"].id], sys.stdout)
        return
    # The snippet's set-up lines, then the same call with the test's messages.
    scope = run(snippet.split("producer.send_task(", 1)[0], broker_url)
    producer, intake = scope["producer"], scope["intake"]
    producer.conf.task_serializer = "json"
    ids = [producer.send_task("mailrelay.send", queue=intake, kwargs={"message": message}).id
           for message in json.load(sys.stdin)]
    json.dump(ids, sys.stdout)


if __name__ == "__main__":
    main()
