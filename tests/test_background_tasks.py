"""The web's background loops stop when they are cancelled, whatever Redis raises."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import redis
import redis.asyncio

from service.apps import AppRegistry
from service.web import app as web_app
from service.web.watcher import SessionWatcher
from tests.conftest import make_settings

_converted: list[bool] = []


async def _cancelled_into_a_timeout() -> None:
    """A Redis call that, the first time its task is cancelled, raises the client's own
    timeout error instead (as when redis-py's read timeout fires as the cancel lands)."""
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        if _converted:
            raise
        _converted.append(True)
        raise redis.TimeoutError("Timeout reading from socket") from None


class _Apps:
    async def register(self, names: Iterable[str]) -> None:
        await _cancelled_into_a_timeout()

    async def managed_keys(self) -> dict[str, str]:
        return {}


class _PubSub:
    async def __aenter__(self) -> _PubSub:
        return self

    async def __aexit__(self, *_: object) -> None:
        return None

    async def subscribe(self, *_: str) -> None:
        await _cancelled_into_a_timeout()


class _Client:
    def pubsub(self) -> _PubSub:
        return _PubSub()


async def _stops(task: asyncio.Task[None]) -> None:
    _converted.clear()
    await asyncio.sleep(0.05)  # inside the Redis call by now
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=5)
    assert done, "still running 5 s after it was cancelled"
    assert task.cancelled()


def test_the_apps_refresher_stops_when_a_cancel_comes_back_as_a_redis_error() -> None:
    """Shutting the web down cancels the apps refresher; it ends even when the cancel
    reaches it as a Redis timeout, rather than retrying forever (the web hung on exit)."""
    registry = AppRegistry(make_settings("redis://127.0.0.1:9", "http://127.0.0.1:9"))

    async def main() -> None:
        await _stops(asyncio.create_task(web_app._refresh_apps(registry, _Apps(), 0.01)))  # type: ignore[arg-type]

    asyncio.run(main())


def test_the_session_watcher_stops_when_a_cancel_comes_back_as_a_redis_error() -> None:
    """The same for the session watcher's subscription."""

    async def main() -> None:
        watcher = SessionWatcher(_Client(), None)  # type: ignore[arg-type]
        await watcher.start()
        assert watcher._task is not None
        await _stops(watcher._task)

    asyncio.run(main())
