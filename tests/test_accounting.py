"""Each event role's accounting (``service.vts.callbacks.ROLES`` and ``apply_event.lua``): what it
adds, that the totals never depend on the order of arrival, and that an impossible value
writes nothing."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal

import pytest
import redis

from service.models import Status
from service.store import Sessions, StoredEvents
from service.store.keys import Keys
from service.vts.callbacks import ROLES, Event, Role, check
from tests.conftest import Clock, store_event, stored_session
from workers import accounting
from workers.dependencies import Dependencies

UUID = "6a0c3f6e-2222-4333-8444-955566667777"
LEG = {"Duration": "42", "BilledDuration": "60", "Amount": "0.00850"}


@pytest.fixture
def sessions(redis_client: redis.Redis) -> Sessions:
    return Sessions(redis_client)


@pytest.fixture
def events(redis_client: redis.Redis) -> StoredEvents:
    return StoredEvents(redis_client)


@pytest.fixture
def ctx(deps: Dependencies) -> Dependencies:
    return replace(deps, clock=Clock())


@pytest.fixture
def session_id(sessions: Sessions, redis_url: str) -> str:
    """An active session tied to VTS session ``UUID``."""
    session = stored_session(redis_url, "ses_" + "b" * 32)
    sessions.claim_vts_session(UUID, session.id)
    sessions.transition(session.id, Status.ACTIVE, allowed=[Status.PENDING])
    return session.id


def _events(
    *names: str, first: int = 1, extra: dict[str, dict[str, str]] | None = None
) -> list[dict[str, str]]:
    """Session callbacks named ``names``, numbered from ``first``; leg ends carry ``LEG``."""
    extra = extra or {}
    return [
        {"EventName": name, "SessionUUID": UUID, "SequenceNumber": str(first + i)}
        | (LEG if ROLES.get(name) in (Role.LEG_END, Role.LEG_COMPLETE) else {})
        | extra.get(name, {})
        for i, name in enumerate(names)
    ]


def _apply(ctx: Dependencies, redis_url: str, params: list[dict[str, str]]) -> list[str]:
    ids = [store_event(redis_url, check("session", p)) for p in params]
    for event_id in ids:
        accounting.apply(ctx, event_id, UUID)
    return ids


def _totals(sessions: Sessions, session_id: str) -> tuple[int, int, int, Decimal]:
    session = sessions.get_session(session_id)
    assert session is not None
    counts = (session.interaction_count, session.call_count, session.billed_duration)
    return (*counts, session.call_amount)


INBOUND = (
    "SessionVirtualNumberAnswer",
    "SessionSecondPartyInitiated",
    "SessionSecondPartyRing",
    "SessionSecondPartyAnswer",
    "SessionFirstPartyComplete",
    "SessionSecondPartyComplete",
)
OUTBOUND_COMPLETE = (
    "SessionFirstPartyInitiated",
    "SessionFirstPartyRinging",
    "SessionFirstPartyAnswer",
    "SessionSecondPartyInitiated",
    "SessionSecondPartyRing",
    "SessionSecondPartyAnswer",
    "SessionFirstPartyComplete",
    "SessionSecondPartyComplete",
)
UNANSWERED_INBOUND = (
    "SessionFirstPartyInitiated",
    "SessionFirstPartyAnswer",
    "SessionSecondPartyInitiated",
    "SessionSecondPartyRing",
    "SessionSecondPartyFailed",
    "SessionFirstPartyComplete",
)
HANGUP_FAMILY = (
    "SessionFirstPartyAnswer",
    "SessionSecondPartyRing",
    "SessionSecondPartyAnswer",
    "SessionFirstPartyHangup",
    "SessionSecondPartyHangup",
    "SessionPartiesHangup",
)


def test_progress_opens_a_call_and_counts_nothing(
    ctx: Dependencies, sessions: Sessions, session_id: str, redis_url: str
) -> None:
    """Role progress: the session is in_progress, no counter moves."""
    _apply(ctx, redis_url, _events("SessionFirstPartyInitiated", "SessionFirstPartyAnswer"))
    assert sessions.get_session(session_id).status is Status.IN_PROGRESS  # type: ignore[union-attr]
    assert _totals(sessions, session_id) == (0, 0, 0, Decimal(0))


def test_leg_end_adds_one_call_its_seconds_and_amount(
    ctx: Dependencies, sessions: Sessions, session_id: str, redis_url: str
) -> None:
    """Role leg_end: one call, its BilledDuration and Amount; no interaction."""
    _apply(ctx, redis_url, _events("SessionFirstPartyHangup", "SessionSecondPartyFailed"))
    assert _totals(sessions, session_id) == (0, 2, 120, Decimal("0.017"))


def test_leg_complete_pairs_with_the_other_partys_neighbour(
    ctx: Dependencies, sessions: Sessions, session_id: str, redis_url: str
) -> None:
    """Role leg_complete: a leg end; two answered legs of both parties side by side in
    sequence are one interaction, counted once whichever arrives first."""
    later, earlier = _events("SessionFirstPartyComplete", "SessionSecondPartyComplete")[::-1]
    _apply(ctx, redis_url, [later])
    assert _totals(sessions, session_id)[:2] == (0, 1)
    _apply(ctx, redis_url, [earlier])
    assert _totals(sessions, session_id) == (1, 2, 120, Decimal("0.017"))


def test_leg_complete_alone_is_no_interaction(
    ctx: Dependencies, sessions: Sessions, session_id: str, redis_url: str
) -> None:
    """A caller's answered leg whose called party never answered is no interaction."""
    _apply(ctx, redis_url, _events(*UNANSWERED_INBOUND))
    assert _totals(sessions, session_id) == (0, 2, 120, Decimal("0.017"))
    assert sessions.get_session(session_id).status is Status.ACTIVE  # type: ignore[union-attr]


def test_parties_hangup_is_one_interaction(
    ctx: Dependencies, sessions: Sessions, session_id: str, redis_url: str
) -> None:
    """Role parties_hangup: one interaction, no leg counted."""
    _apply(ctx, redis_url, _events("SessionPartiesHangup"))
    assert _totals(sessions, session_id) == (1, 0, 0, Decimal(0))


def test_timeout_expires_the_session(
    ctx: Dependencies, sessions: Sessions, session_id: str, redis_url: str
) -> None:
    """Role timeout: the session is expired, and a later call event does not revive it."""
    _apply(ctx, redis_url, _events("SessionTimeout", "SessionFirstPartyAnswer"))
    assert sessions.get_session(session_id).status is Status.EXPIRED  # type: ignore[union-attr]


def test_number_replaces_the_virtual_number(
    ctx: Dependencies, sessions: Sessions, session_id: str, redis_url: str
) -> None:
    """Role number: VirtualNumber becomes the session's number."""
    replaced = {"SessionVirtualNumberReplaced": {"VirtualNumber": "14152000077"}}
    _apply(ctx, redis_url, _events("SessionVirtualNumberReplaced", extra=replaced))
    assert sessions.get_session(session_id).virtual_number == "+14152000077"  # type: ignore[union-attr]


def test_note_changes_nothing_but_the_timeline(
    ctx: Dependencies,
    sessions: Sessions,
    session_id: str,
    redis_url: str,
    redis_client: redis.Redis,
) -> None:
    """Role note: on the timeline, no counter, not counted as unknown."""
    shown = redis_client.llen(Keys.timeline(session_id))
    _apply(ctx, redis_url, _events("SessionPinAuthenticationStatus"))
    assert _totals(sessions, session_id) == (0, 0, 0, Decimal(0))
    assert redis_client.hget(Keys.event_stats(), "unknown") is None
    assert redis_client.llen(Keys.timeline(session_id)) == shown + 1


def test_unknown_is_kept_and_counted(
    ctx: Dependencies,
    sessions: Sessions,
    session_id: str,
    redis_url: str,
    redis_client: redis.Redis,
) -> None:
    """Role unknown: on the timeline and counted, no counter moves."""
    shown = redis_client.llen(Keys.timeline(session_id))
    _apply(ctx, redis_url, _events("SessionSomethingNew"))
    assert _totals(sessions, session_id) == (0, 0, 0, Decimal(0))
    assert redis_client.hget(Keys.event_stats(), "unknown") == b"1"
    assert redis_client.llen(Keys.timeline(session_id)) == shown + 1


def test_an_inbound_call_answered_by_the_virtual_number_is_one_interaction(
    ctx: Dependencies, sessions: Sessions, session_id: str, redis_url: str
) -> None:
    """SessionVirtualNumberAnswer instead of SessionFirstPartyAnswer: both parties talked."""
    _apply(ctx, redis_url, _events(*INBOUND))
    assert _totals(sessions, session_id) == (1, 2, 120, Decimal("0.017"))
    assert sessions.get_session(session_id).status is Status.ACTIVE  # type: ignore[union-attr]


def test_every_order_of_a_call_gives_the_same_totals(
    events: StoredEvents, redis_client: redis.Redis, redis_url: str
) -> None:
    """Orders of an inbound call's events (120 of the 720, the reverse among them) count
    the same, and end active."""
    ids = [store_event(redis_url, check("session", p)) for p in _events(*INBOUND)]
    counters = ("interaction_count", "call_count", "billed_duration", "call_amount_nanos",
                "status")  # fmt: skip
    orders = list(itertools.permutations(range(len(ids))))
    sample = [orders[-1], *random.Random(3).sample(orders, 119)]
    for number, order in enumerate(sample):
        session_id = f"ses_{number:032d}"
        fields = ["status", "active", "index_member", f"0:{session_id}"]
        redis_client.hset(Keys.session(session_id), items=fields)
        redis_client.set(Keys.vts_session(UUID), session_id)
        for index in order:
            applied = events.apply_event(ids[index], UUID, clock=Clock()(), reconcile_after={})
            assert applied.outcome == "applied"
        totals = redis_client.hmget(Keys.session(session_id), *counters)
        assert totals == [b"1", b"2", b"120", b"17000000", b"active"], order


def test_calls_in_reverse_order_with_duplicates_count_exactly(
    ctx: Dependencies, sessions: Sessions, session_id: str, redis_url: str
) -> None:
    """Four calls of every shape, delivered backwards and each twice, with no clock moving:
    exact totals at once (nothing waits for an earlier event)."""
    calls = [INBOUND, OUTBOUND_COMPLETE, UNANSWERED_INBOUND, HANGUP_FAMILY]
    params, first = [], 1
    for names in calls:
        params += _events(*names, first=first)
        first += len(names)
    deliveries = params[::-1] + params
    random.Random(7).shuffle(deliveries[len(params) :])
    _apply(ctx, redis_url, deliveries)
    legs = 2 + 2 + 2 + 2
    assert _totals(sessions, session_id) == (3, legs, 60 * legs, Decimal("0.0085") * legs)


@pytest.mark.parametrize(
    "bad",
    [
        {"Amount": "9999999999"},
        {"Amount": "-0.5"},
        {"Amount": "0.0000000001"},
        {"BilledDuration": "86401"},
    ],
)
def test_an_impossible_leg_value_writes_nothing(
    ctx: Dependencies,
    sessions: Sessions,
    session_id: str,
    redis_url: str,
    redis_client: redis.Redis,
    bad: dict[str, str],
) -> None:
    """A leg end with an impossible Amount or BilledDuration changes no counter, leaves no
    applied marker, leaves the in-flight set, and is counted as invalid."""
    params = _events("SessionFirstPartyHangup")[0] | bad
    # The web refuses such a callback (400); one stored before that check, or put back by
    # hand, must still change nothing here.
    accounting.apply(ctx, store_event(redis_url, Event("session", params)), UUID)
    assert _totals(sessions, session_id) == (0, 0, 0, Decimal(0))
    assert redis_client.scard(Keys.applied(session_id)) == 0
    assert redis_client.zcard(Keys.in_flight(UUID)) == 0
    assert redis_client.hget(Keys.event_stats(), "invalid") == b"1"


def test_an_event_without_a_sequence_number_applies_once(
    ctx: Dependencies,
    sessions: Sessions,
    events: StoredEvents,
    session_id: str,
    redis_url: str,
    redis_client: redis.Redis,
) -> None:
    """No SequenceNumber: the stored event's own id tells its redeliveries apart."""
    params = _events("SessionFirstPartyHangup")[0]
    del params["SequenceNumber"]
    event_id = store_event(redis_url, check("session", params))
    accounting.apply(ctx, event_id, UUID)
    accounting.apply(ctx, event_id, UUID)
    assert _totals(sessions, session_id) == (0, 1, 60, Decimal("0.0085"))
    stored = events.webhook(event_id)
    assert stored is not None
    marker = f"id:{event_id}"
    assert redis_client.smembers(Keys.applied(session_id)) == {marker.encode()}


def test_stale_unapplied_events_stop_holding_up_reconciliation(
    events: StoredEvents, redis_url: str
) -> None:
    """An event stored but never applied counts as in flight only for a bounded time."""
    store_event(redis_url, check("session", _events("SessionFirstPartyAnswer")[0]))
    clock = Clock()
    assert events.events_in_flight(UUID, clock() - timedelta(minutes=5)) == 1
    assert events.events_in_flight(UUID, clock() + timedelta(seconds=1)) == 0
