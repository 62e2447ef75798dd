"""The summary of a delivered message the control API and the inbox page show: the
MIME summary (mime.summarize) plus which provider carried it, and for Graph the
attachment flags Graph's JSON had (isInline, contentId) next to each part's hash."""

from __future__ import annotations

from typing import Any

from mailrelay.emulator import mime
from mailrelay.emulator.state import StoredMessage


def summarize(stored: StoredMessage) -> dict[str, Any]:
    summary = {**mime.summarize(stored), "provider": stored.provider}
    if stored.graph is None:
        return summary
    summary["inline"] = [{**part, "is_inline": True} for part in summary["inline"]]
    summary["attachments"] = [{**part, "is_inline": False} for part in summary["attachments"]]
    summary["graph"] = {
        "id": stored.graph.get("id"),
        "internetMessageId": stored.graph.get("internetMessageId"),
        "internetMessageHeaders": stored.graph.get("internetMessageHeaders", []),
        "singleValueExtendedProperties": stored.graph.get("singleValueExtendedProperties", []),
        "attachments": stored.graph.get("attachments", []),
    }
    return summary
