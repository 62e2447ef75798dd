"""Printing data: JSON for scripts, a table for people."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
# Every command that changes data offers it: the same checks and exit codes, no change.
dry_run_option = click.option("--dry-run", is_flag=True,
                              help="Show what would change; change nothing.")


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str | None = None) -> None:
    """Rows as a table. Every value is shown as it is: rich would read `[sink]` in an error
    detail as markup and drop it, so titles, headers and cells are escaped."""
    grid = Table(title=None if title is None else escape(title))
    for column in columns:
        grid.add_column(escape(column))
    for row in rows:
        grid.add_row(*("" if row.get(c) is None else escape(str(row.get(c))) for c in columns))
    console = Console()
    if not console.is_terminal:  # a pipe or a log: do not squeeze columns into 80
        console = Console(width=200)
    console.print(grid)
