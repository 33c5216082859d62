"""Lets a request wait until a worker changes a session (for ``Prefer: wait=N``).

One Redis subscription per web process carries the ids of changed sessions; waiters
re-read the session when theirs changes, and at least once a second in case a
notification was missed while the subscription reconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Callable

import redis.asyncio
import structlog

from service import redis_clients
from service.models import Session
from service.store import CHANNEL, AsyncSessions

log = structlog.get_logger(__name__)

RECHECK_SECONDS = 1.0


class SessionWatcher:
    def __init__(self, client: redis.asyncio.Redis, sessions: AsyncSessions) -> None:
        self._client = client
        self._sessions = sessions
        self._waiters: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="session-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def wait_for(
        self, session_id: str, done: Callable[[Session], bool], timeout: float
    ) -> Session | None:
        """Return the session once ``done(session)`` holds, or as it is when time runs out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        event = asyncio.Event()
        self._waiters[session_id].add(event)
        try:
            while True:
                session = await self._sessions.get_session(session_id)
                remaining = deadline - loop.time()
                if session is None or done(session) or remaining <= 0:
                    return session
                event.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(remaining, RECHECK_SECONDS))
        finally:
            self._waiters[session_id].discard(event)
            if not self._waiters[session_id]:
                del self._waiters[session_id]

    async def _listen(self) -> None:
        while True:
            try:
                async with self._client.pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            self._notify(message["data"].decode())
            except (redis.RedisError, OSError) as exc:
                if redis_clients.cancelling():
                    raise asyncio.CancelledError from exc
                log.warning("session_watcher_reconnecting", error=type(exc).__name__)
                await asyncio.sleep(1.0)

    def _notify(self, session_id: str) -> None:
        for event in self._waiters.get(session_id, ()):
            event.set()
