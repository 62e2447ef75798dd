"""The message state machine: which state changes exist, and nothing else.

    queued ──► sending ──► sent
       ▲          │  ▲
       │          ├──┘ (an expired lease is taken over; the provider is asked first)
       │          ├──► retrying ──► sending
       │          └──► failed
       └── failed (replay by an operator)
    retrying ──► failed (retry budget spent while parked)
    rejected: written once at intake, never left.
"""

from __future__ import annotations

from enum import StrEnum

from mailrelay.errors import IllegalTransition


class State(StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    RETRYING = "retrying"
    SENT = "sent"
    FAILED = "failed"
    REJECTED = "rejected"


ALLOWED: frozenset[tuple[State, State]] = frozenset(
    {
        (State.QUEUED, State.SENDING),
        (State.RETRYING, State.SENDING),
        (State.SENDING, State.SENDING),
        (State.SENDING, State.SENT),
        (State.SENDING, State.RETRYING),
        (State.SENDING, State.FAILED),
        (State.RETRYING, State.FAILED),
        (State.FAILED, State.QUEUED),
    }
)

FINAL: frozenset[State] = frozenset({State.SENT, State.FAILED, State.REJECTED})


def check(sources: frozenset[State] | set[State], target: State) -> None:
    """Raise IllegalTransition unless every source may move to target."""
    for source in sources:
        if (source, target) not in ALLOWED:
            raise IllegalTransition(f"{source} → {target} is not a message state change")
