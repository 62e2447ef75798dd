"""What the runbooks quote: `mailrelay` commands, SQL and PromQL in fenced blocks, links.

A command is a line of a ``bash``/``sh`` block whose first word (after ``NAME=value``
assignments) is ``mailrelay``; a trailing ``\\`` continues it. What it may exit with is in
its comment: ``# exit 1 when ...`` or ``# exit 0 sent, exit 1 failed or 4 ...``; without
one, 0. Placeholders are whole words: ``ID``, ``ADDRESS``, ``PROVIDER``; an assignment's
``...`` is a value the reader supplies. Shell plumbing after the command (``| jq``) is
not mailrelay's and is dropped.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNBOOKS = ROOT / "runbooks"
PLACEHOLDERS = ("ID", "ADDRESS", "PROVIDER")
_FENCE = re.compile(r"^[ \t]*```([\w-]*)[ \t]*\n(.*?)^[ \t]*```", re.M | re.S)
_ASSIGNMENT = re.compile(r"[A-Z_][A-Z0-9_]*=.*")
_PLUMBING = {"|", "||", "&&", ";", ">", ">>", "2>", "<"}
_EXITS = re.compile(r"\bexits? (\d+(?:(?:,| or|, or) \d+)*)")
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


@dataclass(frozen=True)
class Command:
    page: str
    text: str
    env: tuple[tuple[str, str], ...]
    args: tuple[str, ...]  # after `mailrelay`
    exits: frozenset[int]

    def __str__(self) -> str:
        return f"{self.page}: {self.text}"


def pages() -> list[Path]:
    return sorted(RUNBOOKS.rglob("*.md"))


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT))


def blocks(page: Path) -> list[tuple[str, str]]:
    """(language, text) of every fenced block."""
    return [(m[1].lower(), m[2]) for m in _FENCE.finditer(page.read_text())]


def _lines(text: str) -> list[str]:
    joined: list[str] = []
    carry = ""
    for raw in text.splitlines():
        line = carry + raw.strip()
        if line.endswith("\\"):
            carry = line[:-1] + " "
            continue
        carry = ""
        joined.append(line.removeprefix("$ "))
    return joined


def _split_comment(line: str) -> tuple[str, str]:
    """The line before an unquoted ``#`` and the comment after it."""
    quote = ""
    for i, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1:].strip()
    return line, ""


def exits_in(comment: str) -> frozenset[int]:
    found = {int(n) for m in _EXITS.finditer(comment) for n in re.findall(r"\d+", m[1])}
    return frozenset(found or {0})


def commands(page: Path) -> list[Command]:
    found: list[Command] = []
    for language, text in blocks(page):
        if language not in ("bash", "sh", "shell", "console"):
            continue
        for line in _lines(text):
            code, comment = _split_comment(line)
            if not code:
                continue
            words = shlex.split(code)
            env = []
            while words and _ASSIGNMENT.fullmatch(words[0]):
                name, _, value = words.pop(0).partition("=")
                env.append((name, value))
            if not words or words[0] != "mailrelay":
                continue
            cut = next((i for i, w in enumerate(words) if w in _PLUMBING), len(words))
            found.append(Command(_name(page), line, tuple(env), tuple(words[1:cut]),
                                 exits_in(comment)))
    return found


def all_commands() -> list[Command]:
    return [command for page in pages() for command in commands(page)]


def statements(language: str) -> list[tuple[str, str]]:
    """(page, text) of every ``sql`` statement or ``promql`` expression (one per line;
    a SQL statement ends with ``;``)."""
    found: list[tuple[str, str]] = []
    for page in pages():
        for lang, text in blocks(page):
            if lang != language:
                continue
            if language == "sql":
                found += [(_name(page), s.strip()) for s in text.split(";") if s.strip()]
            else:
                found += [(_name(page), line.strip()) for line in text.splitlines()
                          if line.strip() and not line.strip().startswith("#")]
    return found


def links(page: Path) -> list[str]:
    """Every link target outside fenced blocks."""
    text = _FENCE.sub("", page.read_text())
    return _LINK.findall(text)


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of the page's headings."""
    text = _FENCE.sub("", page.read_text())
    found = set()
    for line in text.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", title)))
    return found


def refused_promql(prometheus_url: str) -> list[str]:
    """Every runbook PromQL expression a Prometheus refuses, with its page and error."""
    import requests

    refused = []
    for page, expr in statements("promql"):
        answer = requests.get(f"{prometheus_url}/api/v1/query", params={"query": expr},
                              timeout=10).json()
        if answer.get("status") != "success":
            refused.append(f"{page}: {expr}: {answer.get('error')}")
    return refused
