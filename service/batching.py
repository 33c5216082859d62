"""Group commit: concurrent requests share Redis round trips, and each still waits for its
own write.

A request submits its script call and awaits the result. Calls submitted while a pipeline
is in flight are sent together in the next one, so under load one round trip carries many
writes, and at low load a call goes out at once. No request is answered before Redis has
confirmed its write.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis.asyncio
from redis.commands.core import AsyncScript

MAX_BATCH = 256

_Call = tuple[AsyncScript, Sequence[Any], Sequence[Any], "asyncio.Future[Any]"]


class GroupCommit:
    def __init__(self, client: redis.asyncio.Redis, max_batch: int = MAX_BATCH) -> None:
        self._client = client
        self._max_batch = max_batch
        self._pending: list[_Call] = []
        self._flushing = False

    async def call(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run ``script`` in the next shared pipeline; raise what Redis raised for this call."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((script, keys, args, future))
        if not self._flushing:
            self._flushing = True
            asyncio.create_task(self._flush())  # noqa: RUF006  (it clears _flushing itself)
        return await future

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                await self._send(batch)
        finally:
            self._flushing = False

    async def _send(self, batch: list[_Call]) -> None:
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for script, keys, args, _ in batch:
                    await script(keys=keys, args=args, client=pipe)
                results = await pipe.execute(raise_on_error=False)
        except (redis.RedisError, OSError) as exc:
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (*_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
