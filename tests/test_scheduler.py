"""Timers in Redis: one scheduler leads across processes, due entries fire once, a dead
leader's entries come back, and overdue sessions expire without VTS's event."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import dramatiq
import pytest
import redis
import redis.asyncio

from service.metrics import metrics
from service.models import Status
from service.store import Schedule, Sessions
from service.store.keys import Keys
from tests.conftest import Clock, stored_session, wait_until
from workers import reconcile
from workers.dependencies import Dependencies
from workers.scheduler import Scheduler
from workers.sessions import EXPIRY_GRACE
from workers.sweep import TimerSweep


@pytest.fixture
def sessions(redis_client: redis.Redis) -> Sessions:
    return Sessions(redis_client)


@pytest.fixture
def schedule(redis_client: redis.Redis) -> Schedule:
    return Schedule(redis_client)


def _queued(client: redis.Redis, queue: str = "sessions") -> int:
    return int(client.llen(Keys.queue(queue)))


def test_only_one_scheduler_leads_and_each_timer_fires_once(
    broker: dramatiq.Broker, schedule: Schedule, redis_client: redis.Redis, deps: Dependencies
) -> None:
    """Two schedulers (two processes): one leads, and a due timer is enqueued once."""
    clock = Clock()
    deps = replace(deps, clock=clock)
    first, second = Scheduler(), Scheduler()
    for n in range(5):
        schedule.schedule("reconcile", f"ses_{n}", clock.moment - timedelta(seconds=1))
    ticks = (first, second, first, second)
    fired = sum(scheduler.tick(deps, broker) for scheduler in ticks)
    assert fired == 5
    assert _queued(redis_client) == 5


def test_taken_timers_come_back_after_their_lease(
    broker: dramatiq.Broker, schedule: Schedule, deps: Dependencies
) -> None:
    """A timer taken but never rescheduled (its process died) fires again after the lease."""
    clock = Clock()
    deps = replace(deps, clock=clock)
    scheduler = Scheduler()
    schedule.schedule("expire", "ses_x", clock.moment)
    assert scheduler.tick(deps, broker) == 1
    assert scheduler.tick(deps, broker) == 0
    clock.moment += timedelta(seconds=61)
    assert scheduler.tick(deps, broker) == 1


def test_a_leader_that_stops_renewing_is_replaced(schedule: Schedule) -> None:
    """The lead expires with its holder: another process takes it."""
    assert schedule.lead("a", ttl_ms=50)
    assert not schedule.lead("b", ttl_ms=50)
    wait_until(lambda: schedule.lead("b", ttl_ms=50), timeout=2)


def _active_session(redis_url: str, sessions: Sessions, expires_at: datetime) -> str:
    session = stored_session(redis_url, "ses_" + "b" * 32)
    sessions.transition(
        session.id, Status.ACTIVE, allowed=[Status.PENDING],
        fields={"expires_at": expires_at.isoformat(), "vts_session_uuid": "u-1"},
    )  # fmt: skip
    return session.id


def test_an_overdue_session_expires_without_vts(
    sessions: Sessions, redis_url: str, redis_client: redis.Redis, deps: Dependencies
) -> None:
    """When expires_at has passed and VTS said nothing, the session becomes expired."""
    clock = Clock()
    session_id = _active_session(redis_url, sessions, clock.moment + timedelta(seconds=30))
    ctx = replace(deps, clock=clock)
    reconcile.expire_if_due(ctx, session_id)
    assert sessions.get_session(session_id).status is Status.ACTIVE  # type: ignore[union-attr]
    clock.moment += timedelta(seconds=31)
    reconcile.expire_if_due(ctx, session_id)
    session = sessions.get_session(session_id)
    assert session is not None
    assert session.status is Status.EXPIRED
    assert redis_client.zscore(Keys.schedule(), f"reconcile:{session_id}") is not None


def test_the_sweep_gives_a_live_session_back_the_timers_it_lacks(
    sessions: Sessions, redis_url: str, redis_client: redis.Redis, deps: Dependencies
) -> None:
    """A live session written without its expiry and reconciliation timers gets both back
    from the sweep, counted; a second pass finds nothing to repair."""
    expires_at = datetime.now(UTC) + timedelta(minutes=10)
    session_id = _active_session(redis_url, sessions, expires_at)
    redis_client.zrem(Keys.schedule(), f"expire:{session_id}", f"reconcile:{session_id}")
    before = _repaired("expire")
    sweep = TimerSweep(every=0)
    assert sweep.step(deps) == 2
    due = redis_client.zscore(Keys.schedule(), f"expire:{session_id}")
    assert due == int((expires_at + EXPIRY_GRACE).timestamp() * 1000)
    assert redis_client.zscore(Keys.schedule(), f"reconcile:{session_id}") is not None
    assert _repaired("expire") == before + 1
    assert sweep.step(deps) == 0


def _repaired(task: str) -> float:
    (family,) = metrics().timers_repaired.collect()
    found = [
        s.value for s in family.samples if s.name.endswith("_total") and s.labels == {"task": task}
    ]
    return found[0] if found else 0.0
