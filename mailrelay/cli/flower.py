"""`mailrelay flower`: Flower for mailrelay's Celery app, behind basic authentication.

Flower runs in this process, as `celery -A mailrelay.celery_app flower` would. Its options
come from ``mailrelay/flower_config.py`` (given as ``--conf``), which reads the login from
MAILRELAY_FLOWER_AUTH: the command line holds only the port, the address and that path.
"""

from __future__ import annotations

import errno
import socket

import click

from mailrelay import flower_config
from mailrelay.cli import preflight, processes
from mailrelay.cli.exits import CONFIG, UNAVAILABLE, Exit
from mailrelay.errors import ConfigError

_CANNOT_LISTEN = {errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES}


def flower_argv(port: int, address: str, loglevel: str | None = None) -> list[str]:
    """The `celery` arguments that start Flower; no secret among them (they show in `ps`).
    Without ``loglevel`` the conf file's (MAILRELAY_LOG_LEVEL) applies."""
    # tornado.options wants --name=value, not --name value; the command line is read after
    # the conf file, so --logging here wins over it.
    return ["flower", f"--port={port}", f"--address={address}", f"--conf={flower_config.PATH}",
            *([f"--logging={loglevel.lower()}"] if loglevel else [])]


@click.command("flower")
@click.option("--port", type=click.IntRange(1, 65535), metavar="N",
              help="Port to serve on (default: MAILRELAY_FLOWER_PORT, 5555).")
@click.option("--address", default="127.0.0.1", show_default=True, metavar="A",
              help="Address to listen on; 0.0.0.0 for every interface. Basic auth sends the "
                   "password in clear: serve it beyond this host only behind TLS.")
@processes.loglevel_option
@click.option("--dry-run", is_flag=True,
              help="Check the settings and that the login is set, print the celery arguments "
                   "(never the password); start nothing, listen on nothing.")
def command(port: int | None, address: str, loglevel: str | None, dry_run: bool) -> None:
    """Run Flower (workers, task ids, states, counts; no message content) behind the login in
    MAILRELAY_FLOWER_AUTH (user:password). Flower is read-only: it cannot revoke or send tasks.

    It checks the broker before starting. Exit codes: 69 the broker is away or the port
    is taken, 78 without MAILRELAY_FLOWER_AUTH (or another bad setting). --dry-run exits
    78 as the real start would; it contacts no broker and binds no port.
    """
    from mailrelay.config import get_settings

    settings = get_settings()
    try:
        flower_config.check_auth(settings.flower_auth)
    except ConfigError as err:
        raise Exit(f"{err}; Flower not started", CONFIG) from None
    listen_port = port or settings.flower_port
    argv = flower_argv(listen_port, address, loglevel)
    if dry_run:  # the arguments hold no secret: the login stays in the conf file's reach
        click.echo("celery -A mailrelay.celery_app " + " ".join(argv))
        click.echo("login: MAILRELAY_FLOWER_AUTH (set; read by the conf file)")
        return
    from mailrelay import metrics_server
    from mailrelay.celery_app import app

    try:
        preflight.check_broker()
        app.start(argv)
    except OSError as err:
        if not isinstance(err, socket.gaierror) and err.errno not in _CANNOT_LISTEN:
            raise
        raise Exit(f"Flower cannot listen on {address}:{listen_port}: {err.strerror or err}",
                   UNAVAILABLE) from None
    finally:
        # Importing the app set up a metrics directory if MAILRELAY_METRICS_PORT is set
        # (it is for workers; Flower serves its own /metrics): leave nothing behind.
        metrics_server.cleanup()
