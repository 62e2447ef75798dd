"""`mailrelay db`: the target revision as alembic users type it, and JSON."""

from __future__ import annotations

import json
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
