"""A worker killed after any write of a transition: the redelivered message finishes it,
and the session ends with every consequence (its timers, the app's notification) exactly
once.

Deterministic, not random kills: each transition runs once per write it makes, on a
Redis client whose process "dies" right after that write reached Redis (every later
command of the dead worker fails, its lock's lease included, as for a SIGKILL); then its
message is delivered again to a healthy worker, as dramatiq does after a crash.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import httpx2
import pytest
import redis
import redis.client

from service.errors import SessionBusy, SessionNotReady
from service.models import Status
from service.settings import Settings
from service.store import Sessions
from service.store.keys import Keys
from service.vts.callbacks import check
from tests.conftest import Clock, make_settings, store_event, stored_session, wait_until
from workers import accounting, boot, reconcile, sessions
from workers.dependencies import Dependencies

# Commands that change Redis (what the transitions send: scripts and plain writes).
WRITES = frozenset(
    {"EVALSHA", "EVAL", "SET", "HSET", "HSETNX", "HDEL", "ZADD", "ZREM", "RPUSH", "DEL",
     "SADD", "SREM", "HINCRBY", "EXPIRE", "PEXPIRE", "LTRIM", "MULTI"}
)  # fmt: skip


class Killed(BaseException):
    """The worker process died here (not an Exception: nothing may catch it)."""


class Fate:
    """When the worker dies: right after its ``die_after``-th write, in the thread that
    does the work. Other threads (the lease renewer) see a dead connection afterwards."""

    def __init__(self, die_after: int) -> None:
        self.die_after = die_after
        self.writes = 0
        self.dead = False
        self.worker_thread = threading.current_thread()

    def before(self) -> None:
        if not self.dead:
            return
        if threading.current_thread() is self.worker_thread:
            raise Killed
        raise redis.ConnectionError("the worker process is gone")

    def wrote(self) -> None:
        if threading.current_thread() is not self.worker_thread:
            return
        self.writes += 1
        if self.writes == self.die_after:
            self.dead = True
            raise Killed


class DyingPipeline(redis.client.Pipeline):
    fate: Fate

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        self.fate.before()
        writes = any(str(args[0]).upper() in WRITES for args, _ in self.command_stack)
        result = super().execute(raise_on_error)
        if writes:
            self.fate.wrote()
        return result


class DyingRedis(redis.Redis):
    """A client of a worker process that dies as its ``fate`` says."""

    fate: Fate

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.fate.before()
        result = super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        if str(args[0]).upper() in WRITES:
            self.fate.wrote()
        return result

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        pipe = DyingPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)
        pipe.fate = self.fate
        return pipe


@pytest.fixture
def settings(redis_url: str, sandbox_url: str) -> Settings:
    return make_settings(redis_url, sandbox_url)


@pytest.fixture
def healthy(settings: Settings, redis_client: redis.Redis) -> Iterator[Dependencies]:
    built = boot.build(settings, redis_client)
    yield replace(built, lock_lease=timedelta(milliseconds=300))
    built.close()


Work = Callable[[Dependencies], None]


def _killed_after_each_write(
    settings: Settings, redis_url: str, work: Work, redeliver: Work, reset: Callable[[], None]
) -> int:
    """Run ``work`` once per write it makes, dying after that write, then ``redeliver``;
    ``reset`` restores the state before the work between runs. Returns how many writes
    the work makes when it lives."""
    die_after = 1
    while True:
        reset()
        client = DyingRedis.from_url(redis_url)
        assert isinstance(client, DyingRedis)
        client.fate = Fate(die_after)
        dying = replace(boot.build(settings, client), lock_lease=timedelta(milliseconds=300))
        try:
            work(dying)
        except Killed:
            redeliver(dying)
            die_after += 1
            continue
        finally:
            dying.close()
            client.connection_pool.disconnect()
        return die_after - 1


def _until_done(work: Work, deps: Dependencies) -> None:
    """Deliver the message again until it is not turned away (the dead worker's lease
    lapses within its 300 ms)."""

    def attempt() -> bool:
        try:
            work(deps)
        except (SessionBusy, SessionNotReady):
            return False
        return True

    wait_until(attempt, timeout=10)


def _notifications(client: redis.Redis, session_id: str) -> list[str]:
    raw = client.zrange(Keys.session_notifications(session_id), 0, -1)
    return [item.decode() for item in raw if isinstance(item, bytes)]


def _timer(client: redis.Redis, task: str, target: str) -> float | None:
    score = client.zscore(Keys.schedule(), f"{task}:{target}")
    return None if score is None else float(score)


def _with_callback(client: redis.Redis, session_id: str) -> None:
    client.hset(Keys.session(session_id), "callback_url", "https://app.example/hooks")


def _vts_sessions(sandbox: httpx2.Client) -> int:
    listed = sandbox.get("/_sandbox/sessions")
    listed.raise_for_status()
    return len(listed.json()["sessions"])


def test_activation_killed_after_any_write(
    settings: Settings,
    redis_url: str,
    redis_client: redis.Redis,
    healthy: Dependencies,
    sandbox: httpx2.Client,
) -> None:
    """Create killed after each of its writes, then redelivered: the session is active
    with its expiry and reconciliation timers, one VTS session, and one active
    notification recorded with its first attempt due."""
    session_ids: list[str] = []

    def reset() -> None:
        session = stored_session(redis_url, f"ses_{len(session_ids):032x}")
        _with_callback(redis_client, session.id)
        session_ids.append(session.id)

    vts_before = _vts_sessions(sandbox)
    writes = _killed_after_each_write(
        settings,
        redis_url,
        lambda deps: sessions.create(deps, session_ids[-1]),
        lambda _: _until_done(lambda deps: sessions.create(deps, session_ids[-1]), healthy),
        reset,
    )
    assert writes >= 3  # the attempt's note, the VTS session's claim, the transition
    assert _vts_sessions(sandbox) - vts_before == len(session_ids)
    for session_id in session_ids:
        session = healthy.sessions.get_session(session_id)
        assert session is not None
        assert session.status is Status.ACTIVE, session_id
        assert session.expires_at is not None
        assert _timer(redis_client, "expire", session_id) is not None
        assert _timer(redis_client, "reconcile", session_id) is not None
        active = f"{session_id}.session.active"
        assert _notifications(redis_client, session_id) == [active]
        assert _timer(redis_client, "notify", active) is not None


UUID = "7b1d4f7f-3333-4444-8555-a66677778888"


@pytest.fixture
def live(redis_url: str, redis_client: redis.Redis) -> Callable[[], str]:
    """Makes a new active session tied to VTS session ``UUID``, with a callback_url."""
    made: list[int] = []

    def make() -> str:
        made.append(1)
        session = stored_session(redis_url, f"ses_{len(made):032x}")
        store = Sessions(redis_client)
        redis_client.delete(Keys.vts_session(UUID))
        store.claim_vts_session(UUID, session.id)
        store.transition(
            session.id,
            Status.ACTIVE,
            allowed=[Status.PENDING],
            fields={"vts_session_uuid": UUID, "expires_at": "2026-01-01T00:00:00+00:00"},
        )
        _with_callback(redis_client, session.id)
        return session.id

    return make


@pytest.mark.parametrize(
    ("name", "status", "notification"),
    [
        ("SessionPartiesHangup", Status.ACTIVE, "session.call_ended.5"),
        ("SessionTimeout", Status.EXPIRED, "session.expired"),
    ],
)
def test_an_event_killed_after_any_write(
    settings: Settings,
    redis_url: str,
    redis_client: redis.Redis,
    healthy: Dependencies,
    live: Callable[[], str],
    name: str,
    status: Status,
    notification: str,
) -> None:
    """An event applied by a worker killed after each of its writes, then redelivered:
    applied once, with its notification recorded once."""
    current: list[tuple[str, str]] = []

    def reset() -> None:
        session_id = live()
        params = {"EventName": name, "SessionUUID": UUID, "SequenceNumber": "5"}
        current.append((session_id, store_event(redis_url, check("session", params))))

    writes = _killed_after_each_write(
        settings,
        redis_url,
        lambda deps: accounting.apply(deps, current[-1][1], UUID),
        lambda _: accounting.apply(healthy, current[-1][1], UUID),
        reset,
    )
    assert writes >= 1
    for session_id, _ in current:
        session = healthy.sessions.get_session(session_id)
        assert session is not None
        assert session.status is status
        assert session.interaction_count == (1 if name == "SessionPartiesHangup" else 0)
        assert _notifications(redis_client, session_id) == [f"{session_id}.{notification}"]


@pytest.mark.parametrize("how", ["by_timer", "by_app"])
def test_expiry_killed_after_any_write(
    settings: Settings,
    redis_url: str,
    redis_client: redis.Redis,
    healthy: Dependencies,
    live: Callable[[], str],
    sandbox: httpx2.Client,
    how: str,
) -> None:
    """Expiry (its timer passed, or the app ended the session) killed after each write,
    then redelivered: expired, its reconciliation and purge timers set, the expired
    notification recorded once."""
    current: list[str] = []
    clock = Clock()

    def work(deps: Dependencies) -> None:
        deps = replace(deps, clock=clock)
        if how == "by_timer":
            reconcile.expire_if_due(deps, current[-1])
        else:
            sessions.expire(deps, current[-1])

    def reset() -> None:
        current.append(live())

    writes = _killed_after_each_write(
        settings, redis_url, work, lambda _: _until_done(work, healthy), reset
    )
    assert writes >= 1
    for session_id in current:
        session = healthy.sessions.get_session(session_id)
        assert session is not None
        assert session.status is Status.EXPIRED
        assert _timer(redis_client, "purge", session_id) is not None
        if how == "by_app":
            assert _timer(redis_client, "reconcile", session_id) is not None
        assert _notifications(redis_client, session_id) == [f"{session_id}.session.expired"]


def test_a_rejected_create_killed_after_any_write(
    settings: Settings,
    redis_url: str,
    redis_client: redis.Redis,
    healthy: Dependencies,
    sandbox: httpx2.Client,
) -> None:
    """A create VTS rejects, killed after each of its writes, then redelivered: the
    session is failed with VTS's reason, its purge set, one failed notification."""
    rejecting = {"error_rate": 1.0, "error_status": 400, "error_paths": ["create"]}
    assert sandbox.put("/_sandbox/faults", json=rejecting).is_success
    session_ids: list[str] = []

    def reset() -> None:
        session = stored_session(redis_url, f"ses_{len(session_ids) + 100:032x}")
        _with_callback(redis_client, session.id)
        session_ids.append(session.id)

    writes = _killed_after_each_write(
        settings,
        redis_url,
        lambda deps: sessions.create(deps, session_ids[-1]),
        lambda _: _until_done(lambda deps: sessions.create(deps, session_ids[-1]), healthy),
        reset,
    )
    assert writes >= 2  # the attempt's note, the transition
    for session_id in session_ids:
        session = healthy.sessions.get_session(session_id)
        assert session is not None
        assert session.status is Status.FAILED
        assert session.error_code == "vts_rejected"
        assert _timer(redis_client, "purge", session_id) is not None
        assert _notifications(redis_client, session_id) == [f"{session_id}.session.failed"]
