"""Exit codes, and the one edge where every failure becomes one line and a code.

Every error a command prints starts with ``mailrelay: ``. Failures of the environment (a
service away, a schema missing, a key that does not fit, a file that is not there) are
recognised by ``mailrelay.cli.failures`` and printed as one line naming the service;
``--debug`` (or ``MAILRELAY_LOG_LEVEL=debug``) prints the traceback above that line. An
exception nobody recognises is a bug: one line saying so, exit 70, the traceback with
``--debug``.

The codes follow sysexits(3) where one fits, so that a supervisor or a script can tell a
broken setting (78, do not restart) from a service that is away (69, try again later).
"""

from __future__ import annotations

import traceback

import click

OK = 0
FAILED = 1
USAGE = 2
NOT_FOUND = 3
IN_FLIGHT = 4
NO_INPUT = 66
UNAVAILABLE = 69
SOFTWARE = 70
CANT_CREATE = 73
CONFIG = 78

# What each code means, as the README's exit-code table shows it (a test compares them).
MEANINGS: dict[int, str] = {
    OK: "done (`status`, `send --wait`: the message is sent)",
    FAILED: "the operation failed: a send was rejected, a message failed, a check found trouble",
    USAGE: "usage error: a missing or conflicting option, an unknown name (nothing was changed)",
    NOT_FOUND: "not found: no such message or account",
    IN_FLIGHT: "`status --wait`, `send --wait`: the message is still queued, sending or "
               "retrying when the wait ended",
    NO_INPUT: "an input file is missing or unreadable",
    UNAVAILABLE: "a service is unavailable: the database, the broker, Redis, the emulator, or "
                 "a port is taken",
    SOFTWARE: "an internal error (a bug): rerun with `--debug` and report the traceback",
    CANT_CREATE: "a file or directory cannot be created (the SQLite outbox's directory is missing)",
    CONFIG: "configuration: a bad setting, a database without the schema, a secret key that "
            "does not fit",
}

PREFIX = "mailrelay: "


class Exit(click.ClickException):
    """Stop with a message on stderr and a chosen exit code."""

    def __init__(self, message: str, code: int = FAILED) -> None:
        super().__init__(message)
        self.exit_code = code  # type: ignore[misc]  # click declares it on the class

    def show(self, file: object = None) -> None:
        say(self.format_message())


def say(line: str) -> None:
    """Print one error line on stderr, in the one style every command uses."""
    click.echo(PREFIX + line, err=True)


class _Debug:
    """Whether tracebacks are wanted: `mailrelay --debug ...` sets it for this process."""

    wanted = False


def want_tracebacks(_ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        _Debug.wanted = True


def _debugging() -> bool:
    if _Debug.wanted:
        return True
    from mailrelay.config import get_settings
    from mailrelay.errors import ConfigError

    try:
        return get_settings().log_level == "debug"
    except ConfigError:
        return False


def _show_usage(err: click.UsageError) -> None:
    """click's usage error, with the error line in mailrelay's style."""
    ctx = err.ctx
    if ctx is not None:
        click.echo(ctx.get_usage(), err=True)
        click.echo(f"Try '{ctx.command_path} {ctx.help_option_names[0]}' for help.\n", err=True)
    say(err.format_message())


def run_guarded(group: click.Group) -> int:
    from mailrelay.cli.failures import explain

    try:
        # Without standalone mode click returns the code of a click.exceptions.Exit (a
        # command that ends with a code and no message, like `status`) instead of raising.
        returned = group.main(standalone_mode=False)
    except click.exceptions.Abort:
        say("aborted")
        return FAILED
    except click.UsageError as err:
        _show_usage(err)
        return USAGE
    except click.ClickException as err:
        err.show()
        return int(err.exit_code)
    except click.exceptions.Exit as err:
        return err.exit_code
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    except Exception as err:
        if _debugging():
            traceback.print_exception(err)
        failure = explain(err)
        if failure is None:
            say(f"internal error ({type(err).__name__}); rerun with --debug for the traceback "
                "and report it")
            return SOFTWARE
        say(failure.line)
        return failure.code
    return returned if isinstance(returned, int) else OK
