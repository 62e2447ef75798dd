"""The README's tables are the contract's public face: they must not drift from the code."""

from __future__ import annotations

from pathlib import Path

from mailrelay import config, providers
from mailrelay.errors import CODES

README = (Path(__file__).parents[2] / "README.md").read_text()


def test_every_setting_is_documented() -> None:
    missing = [s.env for s in config.TABLE if f"`{s.env}`" not in README]
    assert missing == []


def test_every_error_code_is_documented_with_its_retry_decision() -> None:
    for code, entry in CODES.items():
        row = next((line for line in README.splitlines() if line.startswith(f"| `{code}` |")), None)
        assert row is not None, code
        assert row.split("|")[2].strip() == ("yes" if entry.retryable else "no"), code


def test_every_provider_has_a_row_with_its_capabilities() -> None:
    for name in providers.names():
        caps = providers.capabilities(name)
        row = next(line for line in README.splitlines() if line.startswith(f"| `{name}` |"))
        assert f"`mailrelay.{name}`" in row and str(caps.max_recipients) in row


def test_every_metric_is_documented_for_monitoring() -> None:
    from prometheus_client import REGISTRY

    import mailrelay.metrics  # noqa: F401  # registers them

    text = (Path(__file__).parents[2] / "monitoring" / "README.md").read_text()
    names = {m.name for m in REGISTRY.collect() if m.name.startswith("mailrelay_")}
    assert names
    # prometheus_client drops the _total suffix from counter family names.
    assert [n for n in names if f"`{n}`" not in text and f"`{n}_total`" not in text] == []
