"""A producer that does not import mailrelay: a bare Celery app publishing `mailrelay.send`.

Usage: python producer.py BROKER_URL < messages.json   (a JSON list; prints task ids)
"""

from __future__ import annotations

import json
import sys

from celery import Celery


def main() -> None:
    producer = Celery("producer", broker=sys.argv[1])
    producer.conf.task_serializer = "json"
    messages = json.load(sys.stdin)
    ids = []
    for message in messages:
        result = producer.send_task("mailrelay.send", kwargs={"message": message},
                                    queue="mailrelay.intake")
        ids.append(result.id)
    json.dump(ids, sys.stdout)


if __name__ == "__main__":
    main()
