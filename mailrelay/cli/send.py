"""`mailrelay send`: submit one message from a JSON file or from flags.

Two ways in, never mixed: ``--file`` (the whole ``mailrelay.send`` message as JSON) or
the message flags. A message the flags leave incomplete (no --from, no recipient, no
body) is a usage error and nothing is stored; what intake refuses in a complete message
(an address that is not one, a blocked attachment, ...) is stored as ``rejected`` with
its code and detail, as it would be from any producer.
"""

from __future__ import annotations

import base64
import json
import mimetypes
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from mailrelay.cli.exits import FAILED, IN_FLIGHT, NO_INPUT, UNAVAILABLE, USAGE, Exit
from mailrelay.cli.output import emit_json, json_option
from mailrelay.cli.status import wait_for_end
from mailrelay.store.states import FINAL

if TYPE_CHECKING:
    from mailrelay.client import NotEnqueued

# The options that make up a message (parameter: option); none of them goes with --file.
MESSAGE_OPTIONS = {"sender": "--from", "to": "--to", "cc": "--cc", "bcc": "--bcc",
                   "subject": "--subject", "text": "--text", "html": "--html",
                   "attach": "--attach", "inline": "--inline",
                   "idempotency_key": "--idempotency-key"}


def _part(path: Path) -> dict[str, str]:
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    try:
        content = path.read_bytes()
    except OSError as err:
        raise Exit(f"cannot read {path}: {err.strerror}", NO_INPUT) from None
    return {"filename": path.name, "content_type": content_type,
            "content": base64.b64encode(content).decode("ascii")}


def _load(file: str) -> Any:
    try:
        raw = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
    except OSError as err:
        raise Exit(f"cannot read {file}: {err.strerror}", NO_INPUT) from None
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise Exit(f"{file}: not UTF-8 text (byte {err.start}); a message file is JSON in UTF-8",
                   USAGE) from None
    except json.JSONDecodeError as err:
        raise Exit(f"{file}: not valid JSON ({err.msg} at line {err.lineno})", USAGE) from None


def _from_flags(values: dict[str, Any]) -> dict[str, Any]:
    missing = [what for what, given in (
        ("--from", values["sender"]),
        ("a recipient (--to, --cc or --bcc)", values["to"] or values["cc"] or values["bcc"]),
        ("a body (--text or --html)", values["text"] is not None or values["html"] is not None),
    ) if not given]
    if missing:
        raise Exit(f"missing {', '.join(missing)}; or give the whole message with --file", USAGE)
    message: dict[str, Any] = {
        "from": values["sender"], "to": list(values["to"]), "cc": list(values["cc"]),
        "bcc": list(values["bcc"]), "subject": values["subject"] or "",
        "attachments": [_part(p) for p in values["attach"]],
        "inline": [_inline(spec) for spec in values["inline"]]}
    message.update({key: values[flag] for key, flag in (
        ("text", "text"), ("html", "html"), ("idempotency_key", "idempotency_key"))
        if values[flag] is not None})
    return message


def _inline(spec: str) -> dict[str, str]:
    cid, sep, path = spec.partition("=")
    if not sep or not cid:
        raise Exit(f"--inline takes CID=PATH, got {spec!r}", USAGE)
    if not Path(path).is_file():
        raise Exit(f"--inline {cid}: cannot read {path}: no such file", NO_INPUT)
    return {**_part(Path(path)), "cid": cid}


@click.command("send")
@click.option("--file", "file", metavar="PATH",
              help="The whole message as JSON (the mailrelay.send contract); - reads stdin. "
                   "Not with the message options below.")
@click.option("--from", "sender", metavar="ADDRESS", help="Sending account (a registered one).")
@click.option("--to", multiple=True, metavar="ADDRESS",
              help="Recipient; repeat for more (--to a@x --to b@x).")
@click.option("--cc", multiple=True, metavar="ADDRESS", help="Copy recipient; repeat for more.")
@click.option("--bcc", multiple=True, metavar="ADDRESS",
              help="Blind-copy recipient; repeat for more.")
@click.option("--subject", metavar="TEXT", help="Subject line (default: none).")
@click.option("--text", metavar="TEXT", help="Plain-text body.")
@click.option("--html", metavar="HTML", help="HTML body (cleaned by MAILRELAY_HTML_POLICY).")
@click.option("--attach", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              metavar="PATH", help="File to attach; repeat for more.")
@click.option("--inline", multiple=True, metavar="CID=PATH",
              help="Inline image shown where the HTML says cid:CID; repeat for more.")
@click.option("--idempotency-key", metavar="KEY",
              help="Repeat-safe key: the same key and content are one message.")
@click.option("--wait", type=click.FloatRange(0), default=0, metavar="SECONDS",
              help="Wait up to SECONDS for the end: exit 0 sent, 1 failed, 4 still in flight.")
@json_option
def command(file: str | None, wait: float, as_json: bool, **values: Any) -> None:
    """Submit one message and print its id.

    Exit codes: 0 stored and queued (with --wait: sent) · 1 rejected or failed (the code
    and detail follow on stderr) · 2 usage: the options leave the message incomplete,
    --file mixed with message options, a file that is not JSON (nothing stored) · 4 still
    in flight after --wait · 66 the file cannot be read · 69 the database or the broker is
    away (if the message was stored, its id is printed and the reconciler enqueues it).
    """
    from mailrelay.client import NotEnqueued, status, submit
    from mailrelay.config import get_settings, operator_name

    given = [option for name, option in MESSAGE_OPTIONS.items() if values[name]]
    if file is not None and given:
        raise Exit(f"--file holds the whole message: leave out {', '.join(given)} "
                   "(or drop --file)", USAGE)
    message = _load(file) if file is not None else _from_flags(values)
    try:
        result = submit(message, actor=f"cli:{operator_name(get_settings())}")
    except NotEnqueued as err:
        _show(_brief(status(err.result.message_id), err.result.message_id), as_json)
        raise Exit(_not_enqueued(err), UNAVAILABLE) from None
    info = _brief(status(result.message_id), result.message_id)
    if wait > 0 and info["state"] not in FINAL:
        info = _brief(wait_for_end(result.message_id, wait), result.message_id)
    _show(info, as_json)
    if info["state"] in ("rejected", "failed"):
        raise Exit(f"{info['state']}: {info['error_code']}: {info['error_detail']}", FAILED)
    if wait > 0 and info["state"] != "sent":
        raise Exit(f"still {info['state']} after {wait:g}s", IN_FLIGHT)


def _brief(full: dict[str, Any] | None, message_id: str) -> dict[str, Any]:
    full = full or {"id": message_id}
    return {key: full.get(key) for key in ("id", "state", "error_code", "error_detail")}


def _show(info: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json(info)
    else:
        click.echo(info["id"])


def _not_enqueued(err: NotEnqueued) -> str:
    from mailrelay.cli.failures import broker_trouble, reconciler_eta

    message_id = err.result.message_id
    return (f"{broker_trouble(err)}; message {message_id} is stored and queued: the reconciler "
            f"enqueues it within about {reconciler_eta()} s, do not send it again "
            f"(`mailrelay status {message_id}` follows it)")
