"""`mailrelay send`: submit one message from a JSON file or from flags."""

from __future__ import annotations

import base64
import json
import mimetypes
import sys
import time
from pathlib import Path
from typing import Any

import click

from mailrelay.cli.exits import FAILED, USAGE, Exit
from mailrelay.cli.output import emit_json, json_option
from mailrelay.store import outbox
from mailrelay.store.states import FINAL


def _part(path: Path) -> dict[str, str]:
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return {"filename": path.name, "content_type": content_type,
            "content": base64.b64encode(path.read_bytes()).decode("ascii")}


def _load(file: str) -> Any:
    text = sys.stdin.read() if file == "-" else Path(file).read_text("utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise Exit(f"{file}: not valid JSON ({err.msg} at line {err.lineno})", USAGE) from None


@click.command("send")
@click.option("--file", "file", metavar="PATH",
              help="A message as JSON (the mailrelay.send contract); - for stdin.")
@click.option("--from", "sender", metavar="ADDRESS", help="Sending account.")
@click.option("--to", multiple=True, metavar="ADDRESS", help="Recipient (repeatable).")
@click.option("--cc", multiple=True, metavar="ADDRESS")
@click.option("--bcc", multiple=True, metavar="ADDRESS")
@click.option("--subject", default="")
@click.option("--text", help="Plain-text body.")
@click.option("--html", help="HTML body.")
@click.option("--attach", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="File to attach (repeatable).")
@click.option("--inline", multiple=True, metavar="CID=PATH", help="Inline image for cid:CID (repeatable).")
@click.option("--idempotency-key", help="Repeat-safe key: the same key and content send once.")
@click.option("--wait", type=float, default=0, metavar="SECONDS",
              help="Wait up to SECONDS for a final state and exit 1 unless it is sent.")
@json_option
def command(file: str | None, sender: str | None, to: tuple[str, ...], cc: tuple[str, ...],
            bcc: tuple[str, ...], subject: str, text: str | None, html: str | None,
            attach: tuple[Path, ...], inline: tuple[str, ...], idempotency_key: str | None,
            wait: float, as_json: bool) -> None:
    """Submit one message; print its id. A rejected message exits 1 with its error code."""
    from mailrelay.client import submit

    if file:
        message = _load(file)
    else:
        if not sender:
            raise Exit("give --file or --from with --to", USAGE)
        message = {"from": sender, "to": list(to), "cc": list(cc), "bcc": list(bcc),
                   "subject": subject, "attachments": [_part(p) for p in attach],
                   "inline": [_inline(spec) for spec in inline]}
        message.update({k: v for k, v in (("text", text), ("html", html),
                                          ("idempotency_key", idempotency_key)) if v is not None})
    from mailrelay.config import get_settings, operator_name

    result = submit(message, actor=f"cli:{operator_name(get_settings())}")
    info: dict[str, Any] = result.as_dict()
    if wait > 0 and result.state not in FINAL:
        info = _wait(result.message_id, wait)
    if as_json:
        emit_json(info)
    else:
        click.echo(info["id"])
    if info["state"] == "rejected" or info["state"] == "failed":
        raise Exit(f"{info['state']}: {info['error_code']}", FAILED)
    if wait > 0 and info["state"] != "sent":
        raise Exit(f"still {info['state']} after {wait:g}s", FAILED)


def _inline(spec: str) -> dict[str, str]:
    cid, sep, path = spec.partition("=")
    if not sep or not Path(path).is_file():
        raise Exit(f"--inline takes CID=PATH of an existing file, got {spec!r}", USAGE)
    return {**_part(Path(path)), "cid": cid}


def _wait(message_id: str, seconds: float) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while True:
        info = outbox.status(message_id) or {}
        if info.get("state") in FINAL or time.monotonic() > deadline:
            return {"id": message_id, "state": info.get("state"), "error_code": info.get("error_code")}
        time.sleep(0.2)
