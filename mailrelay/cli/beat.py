"""`mailrelay beat`: Celery beat for mailrelay, with the schedule in ``beat_schedule.py``.

Beat keeps when each entry last ran in a schedule file (a ``shelve`` database). The
default is Celery's own, ``celerybeat-schedule`` in the working directory: in the image
that is the service user's home (``/home/mailrelay``), which it owns; give
``--schedule-file`` on a volume to keep it across restarts. Losing it only shifts when
entries next run (beat then counts each interval from its start). It holds entry names
and times, nothing secret. Run one beat per broker: two would send every entry twice.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import click

from mailrelay.cli import preflight, processes
from mailrelay.cli.exits import CANT_CREATE, Exit

DEFAULT_SCHEDULE_FILE = Path("celerybeat-schedule")


def beat_argv(schedule_file: Path, loglevel: str) -> list[str]:
    """The `celery` arguments that start beat."""
    return ["beat", f"--schedule={schedule_file}", f"--loglevel={loglevel}"]


@click.command("beat")
@click.option("--schedule-file", type=click.Path(dir_okay=False, path_type=Path),
              default=DEFAULT_SCHEDULE_FILE, show_default=True, metavar="PATH",
              help="Where beat keeps when each entry last ran (created if missing).")
@processes.loglevel_option
@click.option("--dry-run", is_flag=True,
              help="Check the settings and the schedule file's directory, print the celery "
                   "arguments and the schedule; start nothing, create nothing.")
def command(schedule_file: Path, loglevel: str | None, dry_run: bool) -> None:
    """Run Celery beat: send the periodic jobs of beat_schedule.py to mailrelay.control.

    Run exactly one per broker. With MAILRELAY_METRICS_PORT set it serves /metrics there,
    which Prometheus scrapes to tell that beat is alive. It checks the broker before
    starting: exit 69 if it is away, 73 if the schedule file's directory cannot be created,
    78 for a bad setting. --dry-run exits 73 and 78 as the real start would, contacts no
    broker and binds no port (a running beat may hold them).
    """
    path = schedule_file.expanduser().resolve()
    if dry_run:
        problem = _cannot_create(path.parent)
        if problem:
            _refuse(path, problem)
    else:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            _refuse(path, str(err.strerror))
    from mailrelay.config import get_settings

    port = get_settings().metrics_port  # a bad setting: exit 78, with --dry-run too
    argv = beat_argv(path, processes.loglevel(loglevel))
    if dry_run:
        _show_plan(argv, port)
        return
    if port:
        preflight.check_port(port, "0.0.0.0", "MAILRELAY_METRICS_PORT")  # noqa: S104
    from mailrelay import metrics_server
    from mailrelay.celery_app import app

    try:
        preflight.check_broker()
        app.start(argv)
    finally:
        metrics_server.cleanup()  # the metrics directory importing the app may have made


def _refuse(path: Path, why: str) -> NoReturn:
    raise Exit(f"cannot create the directory of --schedule-file {path}: {why}", CANT_CREATE)


def _cannot_create(directory: Path) -> str | None:
    """Why ``mkdir -p directory`` would fail, without creating anything; None if it would
    not (the directory exists, or its nearest existing parent is a directory we may write)."""
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return "File exists" if probe == directory else "Not a directory"
    if probe != directory and not os.access(probe, os.W_OK | os.X_OK):
        return "Permission denied"
    return None


def _show_plan(argv: list[str], port: int | None) -> None:
    """What `mailrelay beat` would run: the celery arguments and each periodic job."""
    from mailrelay import metrics_server
    from mailrelay.celery_app import app

    try:
        click.echo("celery -A mailrelay.celery_app " + " ".join(argv))
        if port:
            click.echo(f"/metrics on port {port} (MAILRELAY_METRICS_PORT)")
        for name, entry in sorted(app.conf.beat_schedule.items()):
            click.echo(f"  {name}: {entry['task']} every {entry['schedule']} s")
    finally:
        metrics_server.cleanup()  # importing the app may have made a metrics directory
