"""Alembic, driven from code so that `mailrelay db upgrade` needs no alembic.ini."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # ConfigParser interpolation would eat the % of URL-encoded passwords.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def current(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    from mailrelay.store.db import get_engine

    with get_engine(url).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def _scripts() -> Any:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://"))


def head() -> str | None:
    return _scripts().get_current_head()  # type: ignore[no-any-return]


def revisions() -> list[str]:
    """Every revision this version knows, oldest first."""
    return [script.revision for script in reversed(list(_scripts().walk_revisions()))]


def pending(url: str, revision: str = "head") -> tuple[str | None, list[str]]:
    """The database's revision and the migrations ``upgrade(url, revision)`` would apply,
    oldest first; nothing applied. Alembic resolves ``revision`` as the upgrade does: an
    unknown one raises ``CommandError``, one at or below the database's applies nothing."""
    from alembic.script.revision import RevisionError
    from alembic.util.exc import CommandError

    found = current(url)
    try:
        steps = list(_scripts().iterate_revisions(revision, found, implicit_base=True))
    except RevisionError as err:  # what alembic's upgrade raises as a CommandError
        raise CommandError(str(err)) from err
    return found, [script.revision for script in reversed(steps)]
