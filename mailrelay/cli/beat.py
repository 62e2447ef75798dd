"""`mailrelay beat`: Celery beat for mailrelay, with the schedule in ``beat_schedule.py``.

Beat keeps when each entry last ran in a schedule file (a ``shelve`` database). The
default is Celery's own, ``celerybeat-schedule`` in the working directory: in the image
that is the service user's home (``/home/mailrelay``), which it owns; give
``--schedule-file`` on a volume to keep it across restarts. Losing it only shifts when
entries next run (beat then counts each interval from its start). It holds entry names
and times, nothing secret. Run one beat per broker: two would send every entry twice.
"""

from __future__ import annotations

from pathlib import Path

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
def command(schedule_file: Path, loglevel: str | None) -> None:
    """Run Celery beat: send the periodic jobs of beat_schedule.py to mailrelay.control.

    Run exactly one per broker. With MAILRELAY_METRICS_PORT set it serves /metrics there,
    which Prometheus scrapes to tell that beat is alive. It checks the broker before
    starting: exit 69 if it is away, 73 if the schedule file's directory cannot be created.
    """
    path = schedule_file.expanduser().resolve()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise Exit(f"cannot create the directory of --schedule-file {path}: {err.strerror}",
                   CANT_CREATE) from None
    from mailrelay.config import get_settings

    port = get_settings().metrics_port
    if port:
        preflight.check_port(port, "0.0.0.0", "MAILRELAY_METRICS_PORT")  # noqa: S104
    from mailrelay import metrics_server
    from mailrelay.celery_app import app

    try:
        preflight.check_broker()
        app.start(beat_argv(path, processes.loglevel(loglevel)))
    finally:
        metrics_server.cleanup()  # the metrics directory importing the app may have made
