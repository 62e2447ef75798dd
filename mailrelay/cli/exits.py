"""Exit codes, and the one place that turns known failures into a line and a code."""

from __future__ import annotations

import click

from mailrelay.errors import ConfigError, TransientInfraError

OK = 0
FAILED = 1
USAGE = 2
NOT_FOUND = 3
UNAVAILABLE = 69
CONFIG = 78


class Exit(click.ClickException):
    """Stop with a message on stderr and a chosen exit code."""

    def __init__(self, message: str, code: int = FAILED) -> None:
        super().__init__(message)
        self.exit_code = code  # type: ignore[misc]  # click declares it on the class


def run_guarded(group: click.Group) -> int:
    try:
        group.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return FAILED
    except click.ClickException as err:
        err.show()
        return int(err.exit_code)
    except ConfigError as err:
        click.echo(f"mailrelay: bad setting: {err}", err=True)
        return CONFIG
    except TransientInfraError as err:
        click.echo(f"mailrelay: {err}", err=True)
        return UNAVAILABLE
    except click.exceptions.Exit as err:
        return err.exit_code
    return OK
