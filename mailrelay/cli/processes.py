"""What the long-running commands (`worker`, `beat`, `flower`) share: the logging option.
The checks they make before starting are ``mailrelay.cli.preflight``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

LOG_LEVELS = ("debug", "info", "warning", "error")
F = TypeVar("F", bound=Callable[..., Any])


def loglevel_option(func: F) -> F:
    """`--loglevel`, the same on every long-running command."""
    return click.option("--loglevel", type=click.Choice(LOG_LEVELS, case_sensitive=False),
                        metavar="LEVEL", help=f"Log level: {', '.join(LOG_LEVELS)} "
                                              "(default: MAILRELAY_LOG_LEVEL).")(func)


def loglevel(value: str | None) -> str:
    from mailrelay.config import get_settings

    return (value or get_settings().log_level).lower()
