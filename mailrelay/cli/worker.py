"""`mailrelay worker --profile NAME`: a Celery worker from a declarative profile."""

from __future__ import annotations

import click

import workers


@click.command("worker", context_settings={"ignore_unknown_options": True})
@click.option("--profile", "profile_name", required=True,
              type=click.Choice(workers.names()), help="Which queues and pool (see workers/).")
@click.option("--concurrency", type=click.IntRange(1, 256), help="Override the profile's concurrency.")
@click.option("--loglevel", default=None, help="Celery log level (default: MAILRELAY_LOG_LEVEL).")
@click.option("--hostname", help="Worker node name (default: PROFILE@host).")
@click.option("--dry-run", is_flag=True, help="Print the celery arguments and exit.")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def command(profile_name: str, concurrency: int | None, loglevel: str | None, hostname: str | None,
            dry_run: bool, celery_args: tuple[str, ...]) -> None:
    """Run a worker for PROFILE; extra arguments go to `celery worker`."""
    from mailrelay.config import get_settings

    profile = workers.load(profile_name)
    argv = profile.argv(concurrency=concurrency, loglevel=loglevel or get_settings().log_level,
                        hostname=hostname) + list(celery_args)
    if dry_run:
        click.echo("celery -A mailrelay.celery_app " + " ".join(argv))
        return
    from mailrelay import metrics_server

    # Before the app (and prometheus_client) is imported: see metrics_server.
    metrics_server.prepare(get_settings().metrics_port)
    from mailrelay.celery_app import app

    app.worker_main(argv)
