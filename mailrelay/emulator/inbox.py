"""/inbox: what the recipients got, for a person to look at.

Every delivered message is someone else's HTML. It is shown in a sandboxed srcdoc
iframe (no scripts, no forms, an opaque origin) under a strict Content-Security-Policy
that the iframe inherits, so nothing in a message can act in the emulator's origin,
where the control API lives.
"""

from __future__ import annotations

import re
from html import escape
from typing import Any
from urllib.parse import quote, unquote

from mailrelay.emulator.server import Request, Response, Route
from mailrelay.emulator.state import State
from mailrelay.emulator.summary import summarize

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; frame-src 'self'; "
    "base-uri 'none'; form-action 'none'"
)
_HEADERS = [
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
]
# cid: URLs (RFC 2392) wherever they stand: in src, in background, in CSS url().
_CID_URL = re.compile(r"""cid:([^"'\s)>]+)""", re.IGNORECASE)

_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 1.5rem auto; max-width: 70rem;
       padding: 0 1rem; color: #1d1d1f; background: #f6f6f4; }
h1 { font-size: 1.5rem; margin-bottom: .25rem; }
nav a { margin-right: .75rem; }
article { background: #fff; border: 1px solid #ddd; border-radius: 6px; margin: 1.25rem 0;
          padding: 1rem 1.25rem; }
article h2 { font-size: 1.2rem; margin: 0 0 .5rem; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .15rem .75rem; margin: 0; }
dt { color: #666; } dd { margin: 0; overflow-wrap: anywhere; }
h3 { font-size: .95rem; margin: 1rem 0 .35rem; color: #444; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; background: #fafafa; border: 1px solid #eee;
      padding: .6rem; margin: 0; }
iframe { width: 100%; height: 22rem; border: 1px solid #ccc; resize: vertical; background: #fff; }
table { border-collapse: collapse; font-size: .9rem; }
td, th { border: 1px solid #ddd; padding: .25rem .5rem; text-align: left; vertical-align: top; }
code { font-size: .85rem; overflow-wrap: anywhere; }
.meta { color: #666; font-size: .85rem; margin-top: .75rem; }
"""


def routes(state: State) -> list[Route]:
    def page(request: Request) -> Response:
        mailbox = request.params.get("mailbox") or None
        return Response(200, render(state, mailbox).encode("utf-8"), "text/html; charset=utf-8",
                        list(_HEADERS))

    return [
        Route("GET", r"/inbox/?", "inbox.page", page),
        Route("GET", r"/inbox/(?P<mailbox>[^/]+)", "inbox.page", page),
    ]


def render(state: State, mailbox: str | None) -> str:
    messages = state.received(mailbox)
    title = f"Inbox of {mailbox}" if mailbox else "All inboxes"
    mailboxes = sorted({m.mailbox for m in state.received()})
    links = " ".join(f'<a href="/inbox/{quote(box, safe="@")}">{escape(box)}</a>' for box in mailboxes)
    articles = "\n".join(_article(summarize(m)) for m in messages)
    count = f"{len(messages)} message{'s' if len(messages) != 1 else ''}, newest first."
    return f"""<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>{escape(title)} · mailrelay emulator</title>
<style>{_STYLE}</style></head>
<body>
<h1>{escape(title)}</h1>
<p>{count} <a href="/inbox">All inboxes</a></p>
<nav>{links}</nav>
{articles or '<p>No messages yet.</p>'}
</body>
</html>
"""


def _article(summary: dict[str, Any]) -> str:
    rows = [("From", summary["from"]), ("To", ", ".join(summary["to"])),
            ("Cc", ", ".join(summary["cc"])), ("Subject", summary["subject"]),
            ("Date", summary["date"]), ("Message-ID", summary["message_id"]),
            ("Mailbox", summary["mailbox"])]
    headers = "".join(f"<dt>{name}</dt><dd>{escape(value or '')}</dd>" for name, value in rows if value)
    sections = []
    if summary["text"] is not None:
        sections.append(f'<h3>Text</h3><pre class="text">{escape(summary["text"])}</pre>')
    if summary["html"] is not None:
        document = _rewrite_cids(summary["html"], summary["id"])
        # sandbox="" (every restriction on): no scripts, no forms, no popups, and an
        # opaque origin that cannot reach this page.
        sections.append('<h3>HTML</h3><iframe sandbox="" title="HTML body" '
                        f'srcdoc="{escape(document, quote=True)}"></iframe>')
    if summary["attachments"]:
        sections.append("<h3>Attachments</h3>" + _files(summary["attachments"], with_cid=False))
    if summary["inline"]:
        sections.append("<h3>Inline parts</h3>" + _files(summary["inline"], with_cid=True))
    raw_link = f'/_emulator/api/messages/{summary["id"]}/raw'
    via = {"graph": "Microsoft Graph", "gmail": "Gmail"}.get(summary["provider"], summary["provider"])
    meta = (f'<p class="meta">via {escape(via)} · {escape(summary["structure"])} · '
            f'{summary["size"]} bytes · received '
            f'{escape(summary["received_at"])} · <a href="{raw_link}">raw</a></p>')
    subject = escape(summary["subject"] or "(no subject)")
    return (f'<article id="m-{summary["id"]}"><h2>{subject}</h2><dl>{headers}</dl>'
            f'{"".join(sections)}{meta}</article>')


def _files(files: list[dict[str, Any]], *, with_cid: bool) -> str:
    head = "<tr>" + ("<th>cid</th>" if with_cid else "") + \
        "<th>file name</th><th>type</th><th>size</th><th>SHA-256</th></tr>"
    rows = "".join(
        "<tr>" + (f"<td>{escape(f['cid'])}</td>" if with_cid else "")
        + f"<td class=\"filename\">{escape(f['filename'] or '')}</td><td>{escape(f['content_type'])}</td>"
        f"<td>{f['size']} bytes</td><td><code>{f['sha256']}</code></td></tr>"
        for f in files)
    return f"<table>{head}{rows}</table>"


def _rewrite_cids(html: str, message_id: str) -> str:
    def part_url(match: re.Match[str]) -> str:
        cid = unquote(match.group(1))
        return f"/_emulator/api/messages/{message_id}/parts/{quote(cid, safe='')}"

    return _CID_URL.sub(part_url, html)
