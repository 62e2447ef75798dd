"""What a replay would do with each message asked for, before anything changes.

A verdict depends on the provider: a message whose last attempt may have reached it is
asked about first only where the adapter can look a Message-ID up (``can_verify``), so
this sits above the providers; the rows and the replay transition itself are
``mailrelay.store.oncall``. Nothing here reads or returns message content.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from mailrelay import providers
from mailrelay.store import oncall
from mailrelay.store.states import State

WILL_SEND = "failed: will be sent again"
WILL_VERIFY = ("failed after an attempt whose outcome is unknown: the provider is asked first, "
               "then sent only if it has no such Message-ID")
CANNOT_VERIFY = ("failed after an attempt whose outcome is unknown: the provider cannot be asked, "
                 "so it is sent again and may arrive twice")
SKIP = {
    State.SENT.value: "sent: never sent again",
    State.REJECTED.value: "rejected: invalid request, cannot be sent",
    State.QUEUED.value: "queued: still in flight",
    State.SENDING.value: "sending: still in flight",
    State.RETRYING.value: "retrying: still in flight",
}
NOT_FOUND = "no such message"
# A refusal's stable code (in each message's ``refusal`` and in ``skipped_by_reason``):
# the retention job dropped the payload, so there is nothing left to send.
PAYLOAD_PURGED = "payload_purged"
PURGED = ("failed, but its content was dropped after MAILRELAY_PAYLOAD_RETENTION: cannot be "
          f"sent again ({PAYLOAD_PURGED})")


@dataclass(frozen=True)
class Candidate:
    """One message a replay was asked for, and what the replay does with it."""

    id: str
    state: str | None  # None: no such message
    replay: bool
    verdict: str
    account: str | None = None
    provider: str | None = None
    error_code: str | None = None
    attempts: int = 0
    failed_at: str | None = None
    verify: bool = False
    # A stable code when a failed message cannot be replayed (PAYLOAD_PURGED); None otherwise.
    refusal: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _candidate(row: Any) -> Candidate:
    verify = bool(row.verify_before_send)
    failed = row.state == State.FAILED.value
    refusal = PAYLOAD_PURGED if failed and row.payload_purged_at is not None else None
    if not failed:
        verdict = SKIP.get(row.state, f"{row.state}: not failed")
    elif refusal:
        verdict = PURGED
    elif not verify:
        verdict = WILL_SEND
    else:
        verdict = WILL_VERIFY if providers.capabilities(row.provider).can_verify else CANNOT_VERIFY
    failed_at = oncall.iso(row.updated_at) if failed else None
    return Candidate(id=row.id, state=row.state, replay=failed and refusal is None,
                     verdict=verdict, account=row.from_address, provider=row.provider,
                     error_code=row.error_code, attempts=row.attempt_count, failed_at=failed_at,
                     verify=verify, refusal=refusal)


def select_for_replay(ids: Sequence[str] = (), *, provider: str | None = None,
                      account: str | None = None, code: str | None = None,
                      since: dt.datetime | None = None,
                      limit: int | None = None) -> list[Candidate]:
    """The messages a replay would touch, each with its verdict: by ``ids`` (in the order
    given, whatever their state, so that the dry run says why one is skipped), or by
    filters (failed messages only, newest first; ``limit`` None: all of them)."""
    by_filter = any(value is not None for value in (provider, account, code, since, limit))
    if ids and by_filter:
        raise ValueError("select by ids or by filters, not both")
    if not ids:
        return [_candidate(row) for row in oncall.failed_rows(
            provider=provider, account=account, code=code, since=since, limit=limit)]
    wanted = list(dict.fromkeys(ids))
    found = oncall.rows_by_id(wanted)
    return [_candidate(found[i]) if i in found else Candidate(i, None, False, NOT_FOUND)
            for i in wanted]
