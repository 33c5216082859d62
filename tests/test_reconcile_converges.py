"""Reconciliation converges: a difference with VTS that holds still is corrected, also
when a stored callback was never applied (its message lost with a crashed worker)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta

import httpx2
import pytest
import redis
import redis.asyncio

from service import messages
from service.models import Status
from service.store import AsyncStoredEvents, Sessions
from service.store.keys import Keys
from service.vts.callbacks import check
from service.vts.client import VtsClient
from service.vts.ratelimit import RateLimiter
from tests.conftest import AUTH_ID, AUTH_TOKEN, Clock, event_id, stored_session
from workers import reconcile
from workers.dependencies import Dependencies


@pytest.fixture
def vts(sandbox_url: str) -> Iterator[VtsClient]:
    client = VtsClient(base_url=sandbox_url, auth_id=AUTH_ID, auth_token=AUTH_TOKEN)
    yield client
    client.close()


def _store_callback(redis_url: str, params: dict[str, str], received_ms: int) -> None:
    """Store a callback as the web does, received at ``received_ms``, and never apply it."""

    async def go() -> None:
        client = redis.asyncio.Redis.from_url(redis_url)
        event = check("session", params)
        message = messages.APPLY_EVENT.message(messages.EventRef(event_id(event)))
        await AsyncStoredEvents(client).ingest_webhook(
            event, [event_id(event)], message, nonce=None, received_ms=received_ms
        )
        await client.aclose()

    asyncio.run(go())


def test_a_stale_unapplied_callback_does_not_block_the_correction(
    redis_client: redis.Redis,
    redis_url: str,
    vts: VtsClient,
    sandbox: httpx2.Client,
    deps: Dependencies,
) -> None:
    """VTS counts a call we never applied; one of its callbacks is stored but was lost on
    its way to a worker. A recent one holds the correction; once it is older than the
    patience, reconciliation sets VTS's totals."""
    sessions, clock = Sessions(redis_client), Clock()
    remote = vts.create_session({"first_party": "+14155552671", "second_party": "+14155552672"})
    session = stored_session(redis_url, "ses_" + "d" * 32)
    sessions.claim_vts_session(remote.session_uuid, session.id)
    fields = {"vts_session_uuid": remote.session_uuid}
    sessions.transition(session.id, Status.ACTIVE, allowed=[Status.PENDING], fields=fields)
    call = sandbox.post(f"/_sandbox/sessions/{remote.session_uuid}/calls", json={"caller": "vts"})
    assert call.status_code == 202
    lost = {"EventName": "SessionFirstPartyHangup", "SessionUUID": remote.session_uuid,
            "SequenceNumber": "4", "BilledDuration": "60", "Amount": "0.00850"}  # fmt: skip
    _store_callback(redis_url, lost, int(clock().timestamp() * 1000))
    ctx = replace(deps, sessions=sessions, vts=vts, clock=clock)

    for _ in range(2):  # a recent callback in flight: not drift yet, however long
        reconcile.reconcile(ctx, session.id)
        clock.moment += ctx.reconcile_settle
    assert sessions.get_session(session.id).call_count == 0  # type: ignore[union-attr]

    clock.moment += reconcile.IN_FLIGHT_PATIENCE
    reconcile.reconcile(ctx, session.id)
    clock.moment += ctx.reconcile_settle
    reconcile.reconcile(ctx, session.id)
    corrected = sessions.get_session(session.id)
    assert corrected is not None
    assert (corrected.call_count, corrected.interaction_count) == (2, 1)
    assert (
        corrected.billed_duration == vts.get_session(remote.session_uuid).total_call_billed_duration
    )


def test_a_difference_is_not_drift_until_vts_last_call_has_settled(
    redis_client: redis.Redis,
    redis_url: str,
    vts: VtsClient,
    sandbox: httpx2.Client,
    deps: Dependencies,
) -> None:
    """VTS counts a call when it ends and sends its callbacks after: a difference that
    holds still is left alone until the settle time after VTS's last call ended, then corrected."""
    sessions, clock = Sessions(redis_client), Clock()
    remote = vts.create_session({"first_party": "+14155552673", "second_party": "+14155552674"})
    session = stored_session(redis_url, "ses_" + "c" * 32)
    sessions.claim_vts_session(remote.session_uuid, session.id)
    fields = {"vts_session_uuid": remote.session_uuid}
    sessions.transition(session.id, Status.ACTIVE, allowed=[Status.PENDING], fields=fields)
    body = {"caller": "vts", "duration": 600}  # ends ten minutes from now
    assert sandbox.post(f"/_sandbox/sessions/{remote.session_uuid}/calls", json=body).is_success
    ctx = replace(deps, sessions=sessions, vts=vts, clock=clock)

    for _ in range(3):
        reconcile.reconcile(ctx, session.id)
        clock.moment += ctx.reconcile_settle
    assert sessions.get_session(session.id).call_count == 0  # type: ignore[union-attr]

    clock.moment += timedelta(minutes=10)
    reconcile.reconcile(ctx, session.id)
    assert sessions.get_session(session.id).call_count == 2  # type: ignore[union-attr]


def test_a_missed_hangup_leaves_the_session_as_the_hangup_would_have(
    redis_client: redis.Redis,
    redis_url: str,
    vts: VtsClient,
    sandbox: httpx2.Client,
    deps: Dependencies,
) -> None:
    """A session left in_progress by a call whose callbacks never came (refused while
    Redis was away) is set active again once reconciliation finds VTS's call ended."""
    sessions, clock = Sessions(redis_client), Clock()
    remote = vts.create_session({"first_party": "+14155552675", "second_party": "+14155552676"})
    session = stored_session(redis_url, "ses_" + "e" * 32)
    sessions.claim_vts_session(remote.session_uuid, session.id)
    fields = {"vts_session_uuid": remote.session_uuid}
    sessions.transition(session.id, Status.ACTIVE, allowed=[Status.PENDING], fields=fields)
    sessions.transition(session.id, Status.IN_PROGRESS, allowed=[Status.ACTIVE])
    call = {"caller": "first"}
    assert sandbox.post(f"/_sandbox/sessions/{remote.session_uuid}/calls", json=call).is_success
    ctx = replace(deps, sessions=sessions, vts=vts, clock=clock)

    clock.moment += timedelta(minutes=10)
    reconcile.reconcile(ctx, session.id)
    clock.moment += ctx.reconcile_settle
    reconcile.reconcile(ctx, session.id)
    settled = sessions.get_session(session.id)
    assert settled is not None
    assert settled.call_count == 2
    assert settled.status is Status.ACTIVE


def test_reconciliation_spends_only_its_share_of_the_vts_rate(
    redis_client: redis.Redis, redis_url: str, deps: Dependencies
) -> None:
    """With reconciliation's share of the VTS rate spent, a reconciliation asks VTS nothing
    (the VTS of ``deps`` is unreachable: asking would fail) and comes back once a slot
    frees."""
    sessions, clock = Sessions(redis_client), Clock()
    session = stored_session(redis_url, "ses_" + "f" * 32)
    fields = {"vts_session_uuid": "7c2e5f80-4444-4555-8666-b77788889999"}
    sessions.transition(session.id, Status.ACTIVE, allowed=[Status.PENDING], fields=fields)
    budget = RateLimiter(redis_client, "test:reconcile-share", limit=1, window=60)
    ctx = replace(deps, sessions=sessions, clock=clock, reconcile_budget=budget)
    with budget.slot_now() as wait:
        assert wait == 0
        reconcile.reconcile(ctx, session.id)
    due = redis_client.zscore(Keys.schedule(), f"reconcile:{session.id}")
    assert due is not None
    assert due >= (clock.moment + timedelta(seconds=59)).timestamp() * 1000
