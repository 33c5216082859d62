"""Applying VTS events to a session: exactly once, in order, whatever the delivery does."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal

import pytest
import redis
import redis.asyncio

from service.errors import EventNotReady
from service.models import Status
from service.store import Sessions
from service.store.keys import Keys
from service.vts.callbacks import Event, check
from tests.conftest import Clock, store_event, stored_session
from workers import accounting
from workers.dependencies import Dependencies

UUID = "5f0c3f6e-1111-4222-8333-944455556666"


@pytest.fixture
def sessions(redis_client: redis.Redis) -> Sessions:
    return Sessions(redis_client)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ctx(deps: Dependencies, clock: Clock) -> Dependencies:
    return replace(deps, clock=clock)


@pytest.fixture
def session_id(sessions: Sessions, redis_url: str) -> str:
    """An active session tied to VTS session ``UUID``."""
    session = stored_session(redis_url, "ses_" + "a" * 32)
    sessions.claim_vts_session(UUID, session.id)
    sessions.transition(session.id, Status.ACTIVE, allowed=[Status.PENDING])
    return session.id


def _ingest(redis_url: str, event: Event) -> str:
    return store_event(redis_url, event)


def _call(first_seq: int, family: str, billed: int = 60) -> list[dict[str, str]]:
    """One bridged call's events, as the sandbox's families send them."""
    leg_end = {"BilledDuration": str(billed), "Duration": "42", "Amount": "0.00850"}
    if family == "hangup":
        names = [
            ("SessionFirstPartyAnswer", {}),
            ("SessionSecondPartyRing", {}),
            ("SessionSecondPartyAnswer", {}),
            ("SessionFirstPartyHangup", leg_end),
            ("SessionSecondPartyHangup", leg_end),
            ("SessionPartiesHangup", {"Duration": "42"}),
        ]
    else:
        names = [
            ("SessionFirstPartyInitiated", {}),
            ("SessionFirstPartyAnswer", {}),
            ("SessionSecondPartyInitiated", {}),
            ("SessionSecondPartyRing", {}),
            ("SessionSecondPartyAnswer", {}),
            ("SessionFirstPartyComplete", leg_end),
            ("SessionSecondPartyComplete", leg_end),
        ]
    return [
        {"EventName": name, "SessionUUID": UUID, "SequenceNumber": str(first_seq + i), **extra}
        for i, (name, extra) in enumerate(names)
    ]


def _apply_all(ctx: Dependencies, ids: list[str], clock: Clock) -> None:
    """Apply in the given order, retrying held events as the actor would."""
    pending = list(ids)
    for _ in range(100):
        waiting = []
        for event_id in pending:
            try:
                accounting.apply(ctx, event_id, UUID)
            except EventNotReady:
                waiting.append(event_id)
        if not waiting:
            return
        pending = waiting
    raise AssertionError("events still held")


@pytest.mark.parametrize("family", ["hangup", "complete"])
def test_shuffled_duplicated_events_count_exactly(
    ctx: Dependencies,
    sessions: Sessions,
    session_id: str,
    redis_url: str,
    clock: Clock,
    family: str,
) -> None:
    """Three calls' events, shuffled and each delivered twice, count exactly once."""
    size = len(_call(1, family))
    params = [p for call in range(3) for p in _call(1 + call * size, family)]
    ids = [_ingest(redis_url, check("session", p)) for p in params]
    deliveries = ids + ids
    random.Random(4).shuffle(deliveries)
    _apply_all(ctx, deliveries, clock)
    session = sessions.get_session(session_id)
    assert session is not None
    assert (session.call_count, session.billed_duration) == (6, 360)
    assert session.call_amount == Decimal("0.051")
    assert session.interaction_count == 3
    assert session.status is Status.ACTIVE


def test_a_live_call_shows_in_progress(
    ctx: Dependencies, sessions: Sessions, session_id: str, redis_url: str, clock: Clock
) -> None:
    """The session is in_progress while a call is live, active after it."""
    call = _call(1, "hangup")
    _apply_all(ctx, [_ingest(redis_url, check("session", p)) for p in call[:3]], clock)
    assert sessions.get_session(session_id).status is Status.IN_PROGRESS  # type: ignore[union-attr]
    _apply_all(ctx, [_ingest(redis_url, check("session", p)) for p in call[3:]], clock)
    assert sessions.get_session(session_id).status is Status.ACTIVE  # type: ignore[union-attr]


def test_an_event_whose_predecessor_is_missing_is_applied_at_once(
    ctx: Dependencies, sessions: Sessions, session_id: str, redis_url: str, clock: Clock
) -> None:
    """No event waits for an earlier one: the third of a call applies with no clock move."""
    call = _call(1, "hangup")
    accounting.apply(ctx, _ingest(redis_url, check("session", call[2])))
    assert sessions.get_session(session_id).status is Status.IN_PROGRESS  # type: ignore[union-attr]


def test_a_late_answer_does_not_reopen_an_ended_call(
    ctx: Dependencies, sessions: Sessions, session_id: str, redis_url: str, clock: Clock
) -> None:
    """The call event with the highest sequence number decides whether a call is live."""
    call = _call(1, "hangup")
    _apply_all(ctx, [_ingest(redis_url, check("session", p)) for p in call[3:]], clock)
    _apply_all(ctx, [_ingest(redis_url, check("session", p)) for p in call[:3]], clock)
    session = sessions.get_session(session_id)
    assert session is not None
    assert session.status is Status.ACTIVE
    assert session.interaction_count == 1


@pytest.mark.parametrize("named", [True, False])
def test_event_before_the_session_is_known_waits_then_is_kept_aside(
    ctx: Dependencies, redis_client: redis.Redis, redis_url: str, clock: Clock, named: bool
) -> None:
    """An event for an unknown session waits for its create, then is set aside, not lost."""
    event_id = _ingest(redis_url, check("session", {**_call(1, "hangup")[0], "SessionUUID": "x-1"}))
    # Messages name the VTS session; those queued before they did are read for it.
    uuid = "x-1" if named else None
    with pytest.raises(EventNotReady):
        accounting.apply(ctx, event_id, uuid)
    clock.moment += accounting.ORPHAN_AFTER + timedelta(seconds=1)
    accounting.apply(ctx, event_id, uuid)
    assert redis_client.zscore(Keys.orphan_events(), event_id) is not None
    assert redis_client.hget(Keys.event_stats(), "orphaned") == b"1"


def test_timeout_expires_and_number_replaced_updates(
    ctx: Dependencies, sessions: Sessions, session_id: str, redis_url: str, clock: Clock
) -> None:
    """SessionVirtualNumberReplaced changes the number; SessionTimeout expires."""
    replaced = {"EventName": "SessionVirtualNumberReplaced", "SessionUUID": UUID,
                "SequenceNumber": "1", "VirtualNumber": "14152000099"}  # fmt: skip
    timeout = {"EventName": "SessionTimeout", "SessionUUID": UUID, "SequenceNumber": "2"}
    ids = [_ingest(redis_url, check("session", p)) for p in (replaced, timeout)]
    _apply_all(ctx, ids, clock)
    session = sessions.get_session(session_id)
    assert session is not None
    assert session.virtual_number == "+14152000099"
    assert session.status is Status.EXPIRED


def test_unknown_events_are_counted_without_effect(
    ctx: Dependencies,
    sessions: Sessions,
    session_id: str,
    redis_client: redis.Redis,
    redis_url: str,
    clock: Clock,
) -> None:
    """An event name we do not know changes no counter, but is counted and on the timeline."""
    params = {"EventName": "SessionSomethingNew", "SessionUUID": UUID, "SequenceNumber": "1"}
    _apply_all(ctx, [_ingest(redis_url, check("session", params))], clock)
    session = sessions.get_session(session_id)
    assert session is not None
    assert session.call_count == 0
    assert redis_client.hget(Keys.event_stats(), "unknown") == b"1"


def test_reconciliation_sets_vts_totals_and_later_events_still_add(
    sessions: Sessions, session_id: str
) -> None:
    """Reconciling makes counters equal VTS's; an event applied afterwards still counts."""
    before = sessions.reconcile(session_id, {"call_count": 4, "billed_duration": 240,
                                          "call_amount_nanos": 34_000_000,
                                          "interaction_count": 2})  # fmt: skip
    assert before["call_count"] == 0
    session = sessions.get_session(session_id)
    assert session is not None
    assert (session.call_count, session.billed_duration) == (4, 240)
    assert session.call_amount == Decimal("0.034")
