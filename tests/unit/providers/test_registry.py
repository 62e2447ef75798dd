from __future__ import annotations

import pytest

from mailrelay import providers
from mailrelay.errors import ValidationError
from mailrelay.providers.base import Capabilities, Outbound, ProviderAdapter


def test_lookup_is_lazy_cached_and_typed() -> None:
    adapter = providers.get("sink")
    assert adapter is providers.get("sink")
    assert isinstance(adapter, ProviderAdapter)
    assert providers.queue_for("sink") == "mailrelay.sink"
    assert isinstance(providers.capabilities("sink"), Capabilities)


def test_unknown_name_gets_a_hint() -> None:
    with pytest.raises(ValidationError) as err:
        providers.get("snk")
    assert err.value.code == "unknown_provider"
    assert "did you mean 'sink'" in str(err.value)


def test_missing_hook_names_class_and_method() -> None:
    class Half(ProviderAdapter):
        name = "half"

    with pytest.raises(NotImplementedError, match=r"Half\.prepare is not implemented"):
        Half().send(object())  # type: ignore[arg-type]
    with pytest.raises(NotImplementedError, match=r"Half\.find_sent"):
        Half().find_sent(object())  # type: ignore[arg-type]


def test_raw_exceptions_become_provider_errors() -> None:
    from mailrelay.errors import ProviderError

    class Flaky(ProviderAdapter):
        name = "flaky"

        def prepare(self, out: Outbound) -> bytes:
            return b""

        def transmit(self, out: Outbound, prepared: object, tokens: object) -> object:
            raise ConnectionResetError("peer reset")

    with pytest.raises(ProviderError) as err:
        Flaky().send(object())  # type: ignore[arg-type]
    assert err.value.code == "internal_error" and err.value.sent_unknown
    assert isinstance(err.value.__cause__, ConnectionResetError)
