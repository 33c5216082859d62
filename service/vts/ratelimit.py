"""A sliding-window limit on VTS requests, shared by every process through Redis.

VTS allows ``limit`` requests per ``window`` seconds per account, counted when they reach
it. We cannot know when that is, only that it falls between our admission and our
completion; so a slot is held from admission until completion + ``window``. Any
``window``-long stretch of VTS's clock then sees at most ``limit`` requests, whatever the
network jitter. While in flight a slot's score is admission + ``max_in_flight``, so a
holder that dies mid-request frees its slot ``max_in_flight + window`` after admission,
and a live one never loses it early (requests time out long before ``max_in_flight``).

All times are Redis server time, so the workers' clocks do not matter.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources

import msgspec
import structlog
from redis import Redis, RedisError

from service.errors import StoreUnavailable

log = structlog.get_logger(__name__)


def _lua(name: str) -> str:
    """A script of the limiter's, from its ``.lua`` file beside this module."""
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


class RateLimiter:
    """Admit at most ``limit`` VTS requests per ``window`` seconds across all processes.

    ``waits`` counts the times a caller had to sleep; ``on_wait`` (if given) is called with
    each sleep's length in seconds, e.g. to feed a metric. Redis errors surface as
    :class:`~service.errors.StoreUnavailable` on admission (without the limiter we do not
    call VTS); on release they are only logged.
    """

    def __init__(
        self,
        redis: Redis,
        key: str,
        *,
        limit: int = 300,
        window: float = 5.0,
        max_in_flight: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        on_wait: Callable[[float], None] | None = None,
    ) -> None:
        if limit < 1 or window <= 0 or max_in_flight <= 0:
            raise ValueError("limit, window and max_in_flight must be positive")
        self._redis = redis
        self._key = key
        self._limits = {
            "limit": limit,
            "window": round(window * 1_000_000),
            "max_in_flight": round(max_in_flight * 1_000_000),
        }
        self._sleep = sleep
        self._on_wait = on_wait
        self._acquire = redis.register_script(_lua("acquire_slot.lua"))
        self._release = redis.register_script(_lua("release_slot.lua"))
        self._lock = threading.Lock()
        self.waits = 0

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Block (sleeping) until a slot is free; hold it for the block, plus the window."""
        member = uuid.uuid4().hex
        self._take(member)
        try:
            yield
        finally:
            self._give_back(member)

    @contextmanager
    def slot_now(self) -> Iterator[float]:
        """Take a slot if one is free now and hold it for the block, yielding 0; else take
        none and yield the seconds until one frees. Never sleeps."""
        member = uuid.uuid4().hex
        wait_us = self._try(member)
        if wait_us:
            yield wait_us / 1_000_000
            return
        try:
            yield 0.0
        finally:
            self._give_back(member)

    def _try(self, member: str) -> int:
        """0 when ``member`` took a slot, else the microseconds until one frees."""
        try:
            arguments = msgspec.json.encode(self._limits | {"member": member})
            return int(self._acquire(keys=[self._key], args=[arguments]))
        except RedisError as exc:
            raise StoreUnavailable("the VTS rate limiter's Redis is unavailable") from exc

    def _take(self, member: str) -> None:
        while True:
            wait_us = self._try(member)
            if wait_us == 0:
                return
            seconds = wait_us / 1_000_000
            with self._lock:
                self.waits += 1
            if self._on_wait is not None:
                self._on_wait(seconds)
            self._sleep(seconds)

    def _give_back(self, member: str) -> None:
        try:
            self._release(keys=[self._key], args=[member])
        except RedisError as exc:
            # Not raised: the request is done, and failing it now could make the caller
            # repeat it. The slot frees itself after max_in_flight + window: slower, safe.
            log.warning("vts_rate_slot_not_released", error=type(exc).__name__)
