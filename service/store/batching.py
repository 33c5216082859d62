"""Group commit: concurrent requests share Redis round trips, and each still waits for its
own write.

A request submits its script call and awaits the result. Calls submitted while a pipeline
is in flight are sent together in the next one, so under load one round trip carries many
writes, and at low load a call goes out at once. No request is answered before Redis has
confirmed its write, and, where ``Durability`` asks for replicas, before that many
replicas hold it: the batch ends with a WAIT (one per batch, in the same round trip), and
when too few replicas confirm, every call of the batch raises ReplicasBehind.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any

import hiredis
import redis
import redis.asyncio
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, ResponseError

from service.redis_clients import MARK, Durability

MAX_BATCH = 256

_Call = tuple[AsyncScript, Sequence[Any], Sequence[Any], "asyncio.Future[Any]"]


class GroupCommit:
    def __init__(
        self,
        client: redis.asyncio.Redis,
        max_batch: int = MAX_BATCH,
        durability: Durability = Durability(),  # noqa: B008  (frozen: shared safely)
    ) -> None:
        self._client = client
        self._max_batch = max_batch
        self._durability = durability
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
            results = await self._execute(batch)
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

    async def _execute(self, batch: list[_Call]) -> list[Any]:
        results, acked = await self._pipeline(batch)
        missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
        if missing:
            # Redis lost its scripts (a restart, SCRIPT FLUSH). Those calls did nothing, so
            # loading the scripts and sending the calls again runs each exactly once.
            # A script's SHA1 is its source's, so loading it again gives the same one.
            for script in {batch[i][0] for i in missing}:
                await self._client.script_load(script.script)
            again, acked = await self._pipeline([batch[i] for i in missing])
            for i, result in zip(missing, again, strict=True):
                results[i] = result
        if self._durability.replicas:
            # The last WAIT covers every write of the batch, the first round trip's too.
            self._durability.check(acked)
        return results

    async def _pipeline(self, batch: list[_Call]) -> tuple[list[Any], object]:
        """One round trip: every call as EVALSHA (a Script called on a redis-py pipeline
        would first ask Redis whether the scripts exist), packed here in one buffer, then
        one reply per call, an error reply as its exception. Packing the arguments this
        way, by hiredis, costs a tenth of redis-py's generic packing in Python, and a
        create packs a dozen keys.

        Connecting is retried as the client's retry policy says (the pool connects, and
        replaces a pooled connection Redis has closed); a round trip that breaks off is
        not: Redis may have run the batch, and not every script is idempotent (a create
        without an Idempotency-Key), so each call fails with the connection's error (the
        web answers 503, and the app retries, with its key). The connection is then
        dropped, so no reply is ever read by the wrong caller. Returns the calls' replies
        and, where durability asks for replicas, the WAIT's (or the error replied
        instead)."""
        payload = b"".join(
            pack_command(b"EVALSHA", script.sha, len(keys), *keys, *args)
            for script, keys, args, _ in batch
        )
        durable = self._durability.replicas > 0
        if durable:
            payload += pack_command(*MARK) + pack_command(*self._durability.wait_command())
        replies = len(batch) + 2 * durable
        pool = self._client.connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]

        results: list[Any] = []
        try:
            await connection.send_packed_command(payload)
            # One deadline for the batch's replies, not one per reply: redis-py arms and
            # cancels a timer for every read it bounds itself.
            limit = connection.socket_timeout
            if limit is not None:  # WAIT holds its reply back up to its own timeout
                limit += durable * self._durability.timeout
            async with asyncio.timeout(limit):
                for _ in range(replies):
                    try:
                        results.append(await connection.read_response(timeout=math.inf))
                    except ResponseError as exc:
                        results.append(exc)
        except TimeoutError:  # the deadline's (redis-py's own is not a TimeoutError)
            await connection.disconnect()
            raise redis.TimeoutError("Timeout reading the replies from Redis") from None
        except BaseException:
            await connection.disconnect()
            raise
        finally:
            await pool.release(connection)
        if not durable:
            return results, None
        calls, (marked, acked) = results[: len(batch)], results[len(batch) :]
        return calls, marked if isinstance(marked, Exception) else acked


def pack_command(*args: bytes | str | int | float) -> bytes:
    """A command in RESP, byte for byte as redis-py would send it (text as UTF-8, integers
    in decimal, floats as ``repr``), packed by hiredis in C; anything else (a bool, None)
    raises TypeError."""
    # hiredis's stub types the argument as a tuple of one item.
    packed: bytes = hiredis.pack_command(args)  # type: ignore[arg-type]
    return packed
