from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from mailrelay.config import get_settings


@pytest.fixture
def setenv(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """Set MAILRELAY_* variables for the test and reload the settings."""

    def set_(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()

    yield set_
    get_settings.cache_clear()
