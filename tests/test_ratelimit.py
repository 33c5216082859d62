"""The Redis-backed VTS rate limiter, against a real private redis-server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from service.errors import StoreUnavailable
from service.vts.ratelimit import RateLimiter

KEY = "test:vts:ratelimit"


@pytest.fixture
def store(redis_url: str) -> Iterator[redis.Redis]:
    """A client on the shared test Redis (``redis_url`` comes from conftest), flushed."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


def test_admits_up_to_limit_without_waiting(store: redis.Redis) -> None:
    """Up to ``limit`` slots are granted at once, without a wait."""
    limiter = RateLimiter(store, KEY, limit=5, window=10, sleep=fail_on_sleep)
    for _ in range(5):
        with limiter.slot():
            pass
    assert limiter.waits == 0
    assert store.zcard(KEY) == 5


def fail_on_sleep(seconds: float) -> None:
    raise AssertionError(f"unexpected wait of {seconds}s")


def test_window_never_exceeded_under_concurrency(store: redis.Redis) -> None:
    """Many threads, two limiters: no window of VTS time holds more than ``limit`` requests."""
    limit, window = 20, 0.5
    limiters = [RateLimiter(store, KEY, limit=limit, window=window) for _ in range(2)]
    timeline: list[tuple[float, float]] = []
    lock = threading.Lock()

    def worker(limiter: RateLimiter, requests: int) -> None:
        for _ in range(requests):
            with limiter.slot():
                admitted = time.monotonic()
                completed = time.monotonic()
            with lock:
                timeline.append((admitted, completed))

    threads = [threading.Thread(target=worker, args=(limiters[i % 2], 4)) for i in range(15)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(timeline) == 60
    # A request reaches VTS somewhere in [admitted, completed]; any window [t, t + window]
    # it can fall in starts at or before its completion. Check every such start.
    for start, _ in sorted(timeline) + [(c, c) for _, c in timeline]:
        seen = [1 for a, c in timeline if a <= start + window and c >= start]
        assert len(seen) <= limit
    assert sum(limiter.waits for limiter in limiters) > 0
    span = max(c for _, c in timeline) - min(a for a, _ in timeline)
    assert span >= 2 * window  # 60 requests at 20 per window need three windows


def test_slot_is_held_until_completion_plus_window(store: redis.Redis) -> None:
    """A long request keeps its slot past the window; its slot frees a window after it ends."""
    waits: list[float] = []
    limiter = RateLimiter(store, KEY, limit=1, window=0.2, max_in_flight=30, on_wait=waits.append)
    with limiter.slot():
        assert only_score(store) == pytest.approx(server_seconds(store) + 30, abs=1)
    assert only_score(store) == pytest.approx(server_seconds(store), abs=1)
    started = time.monotonic()
    with limiter.slot():
        pass
    assert 0.1 <= time.monotonic() - started < 5
    assert waits
    assert all(0 < wait <= 0.2 for wait in waits)


def only_score(store: redis.Redis) -> float:
    """The score of the one slot in the key, in seconds of Redis time."""
    entries = cast("list[tuple[bytes, float]]", store.zrange(KEY, 0, 0, withscores=True))
    ((_, score),) = entries
    return score / 1e6


def server_seconds(store: redis.Redis) -> float:
    seconds, micros = store.time()
    return seconds + micros / 1e6


def test_waiters_wait_while_all_slots_in_flight(store: redis.Redis) -> None:
    """While every slot is in flight, a caller waits a window at a time and asks again."""
    sleeps: list[float] = []
    holder = RateLimiter(store, KEY, limit=1, window=0.25, max_in_flight=30)
    release = threading.Event()
    entered = threading.Event()
    exited: list[float] = []

    def hold() -> None:
        with holder.slot():
            entered.set()
            release.wait(10)
            exited.append(time.monotonic())

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:
            release.set()
        time.sleep(seconds)

    thread = threading.Thread(target=hold)
    thread.start()
    assert entered.wait(10)
    waiter = RateLimiter(store, KEY, limit=1, window=0.25, max_in_flight=30, sleep=sleep)
    with waiter.slot():
        admitted = time.monotonic()
    thread.join(10)
    assert sleeps[:2] == [0.25, 0.25]
    assert waiter.waits == len(sleeps)
    assert admitted - exited[0] >= 0.25 - 0.01


def test_crashed_holder_slot_expires_after_max_in_flight(store: redis.Redis) -> None:
    """A slot never released (its holder died) frees max_in_flight + window after admission."""
    crashed = RateLimiter(store, KEY, limit=2, window=0.2, max_in_flight=0.5)
    held = [crashed.slot(), crashed.slot()]  # kept alive: collecting them would release
    for slot in held:
        slot.__enter__()  # entered and never exited, as if the process died
    started = time.monotonic()
    limiter = RateLimiter(store, KEY, limit=2, window=0.2, max_in_flight=0.5)
    with limiter.slot():
        elapsed = time.monotonic() - started
    assert 0.6 <= elapsed < 5
    assert limiter.waits >= 1
    assert len(held) == 2


def test_slot_released_when_block_raises(store: redis.Redis) -> None:
    """A request that fails still marks its slot complete."""
    limiter = RateLimiter(store, KEY, limit=1, window=1, max_in_flight=60)
    with pytest.raises(RuntimeError), limiter.slot():
        raise RuntimeError("request failed")
    assert only_score(store) == pytest.approx(server_seconds(store), abs=1)


def test_key_expires(store: redis.Redis) -> None:
    """The slots key carries a TTL covering max_in_flight + window, so it never lingers."""
    limiter = RateLimiter(store, KEY, limit=3, window=5, max_in_flight=60)
    with limiter.slot():
        pass
    assert 65_000 <= store.pttl(KEY) <= 66_000


def test_each_slot_is_its_own_member(store: redis.Redis) -> None:
    """Concurrent slots from one limiter are distinct members."""
    limiter = RateLimiter(store, KEY, limit=3, window=5)
    with limiter.slot(), limiter.slot(), limiter.slot():
        assert store.zcard(KEY) == 3


def test_redis_down_is_store_unavailable(tmp_path: Path) -> None:
    """Without Redis no slot is granted: StoreUnavailable, and VTS is not called."""
    no_retry = Retry(NoBackoff(), 0)
    dead = redis.Redis(unix_socket_path=str(tmp_path / "none.sock"), retry=no_retry)
    limiter = RateLimiter(dead, KEY)
    with pytest.raises(StoreUnavailable), limiter.slot():
        pytest.fail("admitted without Redis")


@pytest.mark.parametrize("kwargs", [{"limit": 0}, {"window": 0}, {"max_in_flight": -1}])
def test_rejects_nonsense_settings(store: redis.Redis, kwargs: dict[str, float]) -> None:
    """Zero or negative limit, window or max_in_flight is a ValueError."""
    with pytest.raises(ValueError, match="positive"):
        RateLimiter(store, KEY, **kwargs)  # type: ignore[arg-type]
