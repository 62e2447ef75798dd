"""`mailrelay db`: the target revision as alembic users type it, and JSON."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from mailrelay.cli import cli
from mailrelay.config import get_settings
from mailrelay.store import migrate


@pytest.fixture
def sqlite_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'outbox.db'}"
    monkeypatch.setenv("MAILRELAY_DATABASE_URL", url)
    get_settings.cache_clear()
    yield url
    get_settings.cache_clear()


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def test_upgrade_takes_the_revision_as_an_argument(sqlite_url: str) -> None:
    first = migrate.revisions()[0]
    result = run("db", "upgrade", first, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["database"] == first
    current = json.loads(run("db", "current", "--json").stdout)
    assert current == {"database_url": sqlite_url, "database": first,
                       "newest": migrate.head(), "up_to_date": False}
    assert run("db", "upgrade", "--revision", "head").exit_code == 0  # the old spelling
    assert json.loads(run("db", "current", "--json").stdout)["up_to_date"] is True
    assert "--revision" not in run("db", "upgrade", "--help").output


def test_an_unknown_revision_is_a_usage_error_listing_the_known_ones(sqlite_url: str) -> None:
    result = run("db", "upgrade", "bogus")
    assert result.exit_code == 2
    assert result.stderr.startswith("mailrelay: cannot upgrade to 'bogus'")
    assert all(revision in result.stderr for revision in migrate.revisions())
    assert json.loads(run("db", "current", "--json").stdout)["database"] is None


def _tables(url: str) -> list[str]:
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        return sorted(row[0] for row in conn.execute("SELECT name FROM sqlite_master"))


def test_upgrade_dry_run_lists_the_migrations_it_would_apply_and_applies_none(
        sqlite_url: str) -> None:
    known = migrate.revisions()
    assert run("db", "upgrade", known[0]).exit_code == 0
    schema = _tables(sqlite_url)
    result = run("db", "upgrade", "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.stdout == (f"database at revision {known[0]}; would apply "
                             f"{', '.join(known[1:])} (dry run: nothing applied)\n")
    result = run("db", "upgrade", known[2], "--dry-run", "--json")
    assert json.loads(result.stdout) == {"database_url": sqlite_url, "database": known[0],
                                         "newest": migrate.head(),
                                         "would_apply": known[1:3], "dry_run": True}
    assert _tables(sqlite_url) == schema
    assert json.loads(run("db", "current", "--json").stdout)["database"] == known[0]
    # What it said is what the real upgrade does.
    assert json.loads(run("db", "upgrade", known[2], "--json").stdout)["database"] == known[2]
    assert _tables(sqlite_url) != schema
    assert run("db", "upgrade", known[0], "--dry-run").stdout.endswith(
        "nothing to apply (dry run: nothing applied)\n")  # below the database: a no-op


@pytest.mark.parametrize("target", ["bogus", "0001", "head"])
def test_upgrade_dry_run_exits_as_the_real_upgrade(sqlite_url: str, target: str) -> None:
    assert run("db", "upgrade", "0002").exit_code == 0
    schema = _tables(sqlite_url)
    dry = run("db", "upgrade", target, "--dry-run")
    assert _tables(sqlite_url) == schema
    real = run("db", "upgrade", target)
    assert dry.exit_code == real.exit_code == (2 if target == "bogus" else 0)
    assert dry.stderr == real.stderr
