from __future__ import annotations

import itertools

import pytest

from mailrelay.errors import IllegalTransition
from mailrelay.store.states import ALLOWED, FINAL, State, check

EXPECTED = {
    ("queued", "sending"), ("retrying", "sending"), ("sending", "sending"), ("sending", "sent"),
    ("sending", "retrying"), ("sending", "failed"), ("retrying", "failed"), ("failed", "queued"),
}


@pytest.mark.parametrize(("source", "target"), sorted(itertools.product(State, State)))
def test_each_pair_is_allowed_exactly_when_the_design_says(source: State, target: State) -> None:
    if (source.value, target.value) in EXPECTED:
        check({source}, target)
    else:
        with pytest.raises(IllegalTransition):
            check({source}, target)


def test_table_matches_the_design() -> None:
    assert {(a.value, b.value) for a, b in ALLOWED} == EXPECTED


def test_rejected_and_sent_are_never_left() -> None:
    assert not [pair for pair in ALLOWED if pair[0] in (State.REJECTED, State.SENT)]
    assert {State.SENT, State.FAILED, State.REJECTED} == FINAL
