"""The `mailrelay` command. Each subcommand lives in its own module here.

Exit codes scripts can rely on are ``exits.MEANINGS`` (and the README's table); every
failure reaches the user as one ``mailrelay: ...`` line through ``exits.run_guarded``.
"""

from __future__ import annotations

import sys

import click

from mailrelay.cli import (
    accounts,
    auth,
    beat,
    bench,
    db,
    demo,
    drill,
    emulator,
    flower,
    notify,
    oncall,
    queues,
    reconcile,
    rollout,
    scenarios,
    send,
    status,
    worker,
)
from mailrelay.cli.exits import run_guarded, want_tracebacks


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="mailrelay")
@click.option("--debug", is_flag=True, expose_value=False, callback=want_tracebacks,
              help="Print the traceback behind an error (also MAILRELAY_LOG_LEVEL=debug).")
def cli() -> None:
    """mailrelay: send email through users' own mailboxes, exactly once."""


for module in (send, status, accounts, auth, rollout, db, worker, demo, bench, beat, flower,
               emulator, scenarios, drill, queues, reconcile, notify):
    cli.add_command(module.command)
cli.add_command(oncall.failed)
cli.add_command(oncall.rejected)
cli.add_command(oncall.replay)


def main() -> None:
    sys.exit(run_guarded(cli))
