"""The `mailrelay` command. Each subcommand lives in its own module here.

Exit codes scripts can rely on:
  0 done · 1 the operation failed (a send was rejected, a message failed) · 2 usage error
  3 not found · 69 a service (database, broker, Redis) is unavailable · 78 bad setting
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
    emulator,
    flower,
    oncall,
    rollout,
    send,
    status,
    worker,
)
from mailrelay.cli.exits import run_guarded


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="mailrelay")
def cli() -> None:
    """mailrelay: send email through users' own mailboxes, exactly once."""


for module in (send, status, accounts, auth, rollout, db, worker, demo, bench, beat, flower,
               emulator):
    cli.add_command(module.command)
cli.add_command(oncall.failed)
cli.add_command(oncall.replay)


def main() -> None:
    sys.exit(run_guarded(cli))
