"""`mailrelay worker --profile NAME`: a Celery worker from a declarative profile."""

from __future__ import annotations

import click

import workers
from mailrelay.cli import preflight, processes


def _profiles_epilog() -> str:
    """Every profile with its queues and why it is set up as it is, for `worker --help`."""
    lines = ["\b", "Profiles (workers/NAME.py):"]
    for name in workers.names():
        profile = workers.load(name)
        lines.append(f"  {name:<10} {profile.pool} x{profile.concurrency}: {profile.why}")
    return "\n".join(lines)


@click.command("worker", context_settings={"ignore_unknown_options": True},
               epilog=_profiles_epilog())
@click.option("--profile", "profile_name", required=True,
              type=click.Choice(workers.names()), help="Which queues and pool (below).")
@click.option("--concurrency", type=click.IntRange(1, 256), help="Override the profile's concurrency.")
@processes.loglevel_option
@click.option("--hostname", help="Worker node name (default: PROFILE@host).")
@click.option("--dry-run", is_flag=True, help="Print the celery arguments and exit.")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def command(profile_name: str, concurrency: int | None, loglevel: str | None, hostname: str | None,
            dry_run: bool, celery_args: tuple[str, ...]) -> None:
    """Run a worker for PROFILE; extra arguments go to `celery worker`.

    Before starting it checks the database (reachable, schema up to date), the secret key
    (it decrypts the stored secrets), the broker and the metrics port: exit 69 if a service
    is away or the port taken, 78 for the schema or the key. Run it under a supervisor that
    restarts it (compose: `restart: unless-stopped`).
    """
    from mailrelay.config import get_settings

    profile = workers.load(profile_name)
    argv = profile.argv(concurrency=concurrency, loglevel=processes.loglevel(loglevel),
                        hostname=hostname) + list(celery_args)
    if dry_run:
        click.echo("celery -A mailrelay.celery_app " + " ".join(argv))
        return
    settings = get_settings()
    preflight.check_database()
    preflight.check_secret_key()
    if settings.metrics_port:
        preflight.check_port(settings.metrics_port, "0.0.0.0", "MAILRELAY_METRICS_PORT")  # noqa: S104
    from mailrelay import metrics_server

    # Before the app (and prometheus_client) is imported: see metrics_server.
    metrics_server.prepare(settings.metrics_port)
    from mailrelay.celery_app import app

    try:
        preflight.check_broker()
    except BaseException:
        metrics_server.cleanup()  # the directory prepare made; no worker will use it
        raise
    app.worker_main(argv)
