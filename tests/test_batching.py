"""Group commit: concurrent writes share a round trip, each gets its own reply."""

from __future__ import annotations

import asyncio
import time

import hypothesis
import pytest
import redis
import redis.asyncio
from hypothesis import strategies as st
from redis.asyncio.connection import Connection

from service.store.batching import GroupCommit, pack_command

# Echoes its key and argument; fails for the argument "fail".
ECHO = """
if ARGV[1] == 'fail' then return redis.error_reply('refused ' .. KEYS[1]) end
redis.call('RPUSH', KEYS[1], ARGV[1])
return {KEYS[1], ARGV[1]}
"""

_ARGS = st.lists(
    st.one_of(
        st.text(max_size=40),
        st.binary(max_size=40),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.floats(),
    ),
    min_size=1,
    max_size=12,
)


@hypothesis.given(args=_ARGS)
def test_commands_are_packed_as_redis_py_packs_them(
    args: list[str | bytes | int | float],
) -> None:
    """Text (any Unicode), bytes, integers and floats come out byte for byte as
    redis-py's."""
    assert pack_command("EVALSHA", *args) == b"".join(Connection().pack_command("EVALSHA", *args))


def test_what_redis_py_would_refuse_is_refused() -> None:
    """No silent str() of a bool or None."""
    for bad in (True, None, [b"x"]):
        with pytest.raises(TypeError):
            pack_command("SET", "k", bad)  # type: ignore[arg-type]


def _run(redis_url: str, calls: list[tuple[str, str]], flush_scripts: bool = False) -> list[object]:
    async def go() -> list[object]:
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            group = GroupCommit(client, max_batch=8)
            script = client.register_script(ECHO)
            await script(keys=["warm"], args=["up"])
            if flush_scripts:
                await client.script_flush()
            tasks = [group.call(script, [key], [arg]) for key, arg in calls]
            return list(await asyncio.gather(*tasks, return_exceptions=True))
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_each_call_gets_its_own_reply_and_error(redis_url: str, redis_client: redis.Redis) -> None:
    """50 concurrent calls in batches of 8: each gets its own reply; an error reply fails
    its own call only; every write happened once, in order."""
    calls = [(f"k{i % 3}", "fail" if i % 7 == 0 else f"v{i}") for i in range(50)]
    results = _run(redis_url, calls)
    for (key, arg), result in zip(calls, results, strict=True):
        if arg == "fail":
            assert isinstance(result, redis.ResponseError)
            assert f"refused {key}" in str(result)
        else:
            assert result == [key.encode(), arg.encode()]
    for key in ("k0", "k1", "k2"):
        expected = [arg.encode() for k, arg in calls if k == key and arg != "fail"]
        assert redis_client.lrange(key, 0, -1) == expected


def test_calls_after_redis_lost_its_scripts_run_once(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """After SCRIPT FLUSH the first batch meets NOSCRIPT: the script is loaded and the
    calls sent again, each run exactly once."""
    calls = [("once", f"v{i}") for i in range(20)]
    results = _run(redis_url, calls, flush_scripts=True)
    assert results == [[b"once", arg.encode()] for _, arg in calls]
    assert redis_client.lrange("once", 0, -1) == [arg.encode() for _, arg in calls]


def test_a_dropped_connection_is_replaced(redis_url: str, redis_client: redis.Redis) -> None:
    """Redis closing the client's connection between batches fails at most the batch
    that meets it (its callers answer 503; nothing is sent twice: a script may have run
    before the connection broke); the next batch goes out on a new connection."""

    async def go() -> list[object]:
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            group = GroupCommit(client)
            script = client.register_script(ECHO)
            await script(keys=["warm"], args=["up"])
            outcomes: list[object] = [await group.call(script, ["dropped"], ["before"])]
            redis_client.client_kill_filter(_type="normal", skipme=True)
            for attempt in ("met", "after"):
                try:
                    outcomes.append(await group.call(script, ["dropped"], [attempt]))
                except redis.ConnectionError as exc:
                    outcomes.append(exc)
            return outcomes
        finally:
            await client.aclose()

    before, met, after = asyncio.run(go())
    assert before == [b"dropped", b"before"]
    assert after == [b"dropped", b"after"]
    written = redis_client.lrange("dropped", 0, -1)
    if isinstance(met, redis.ConnectionError):
        assert written == [b"before", b"after"]
    else:
        assert written == [b"before", b"met", b"after"]


def test_replies_that_do_not_come_fail_the_batch_in_time(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """A Redis that stops answering (CLIENT PAUSE) fails every call of the batch waiting
    on it with redis-py's TimeoutError once the client's socket timeout has passed, and
    the connection is dropped: the next batch, once Redis answers again, gets its own
    reply, never one left over from the batch that gave up."""
    timeout = 0.3

    async def go() -> tuple[list[object], float, object]:
        client = redis.asyncio.Redis.from_url(redis_url, socket_timeout=timeout)
        try:
            group = GroupCommit(client)
            script = client.register_script(ECHO)
            await script(keys=["warm"], args=["up"])
            redis_client.client_pause(1000, all=False)  # writes, scripts included
            started = time.monotonic()
            calls = [group.call(script, ["paused"], [f"v{i}"]) for i in range(5)]
            outcomes = list(await asyncio.gather(*calls, return_exceptions=True))
            waited = time.monotonic() - started
            redis_client.client_unpause()
            after = await group.call(script, ["paused"], ["after"])
            return outcomes, waited, after
        finally:
            await client.aclose()

    outcomes, waited, after = asyncio.run(go())
    assert all(isinstance(outcome, redis.TimeoutError) for outcome in outcomes), outcomes
    assert timeout <= waited < timeout + 0.5
    assert after == [b"paused", b"after"]


def test_a_batch_redis_may_have_run_is_never_sent_twice(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """The connection breaking after the batch went out but before its replies came
    back fails the batch's calls: Redis may have run them, and a script is not
    idempotent (a create without an Idempotency-Key), so they are never sent again.
    The next batch gets a new connection."""
    upstream = redis_client.connection_pool.connection_kwargs
    cut = asyncio.Event()

    async def go() -> tuple[object, object]:
        relays: set[asyncio.Task[None]] = set()

        async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            relays.add(task)
            if "path" in upstream:
                upstream_reader, upstream_writer = await asyncio.open_unix_connection(
                    upstream["path"]
                )
            else:
                upstream_reader, upstream_writer = await asyncio.open_connection(
                    upstream["host"], upstream["port"]
                )

            async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
                try:
                    while data := await source.read(65536):
                        if source is upstream_reader and cut.is_set():
                            cut.clear()  # Redis ran the batch; its replies are lost
                            break
                        sink.write(data)
                        await sink.drain()
                except OSError:  # the other side went first
                    pass
                finally:
                    writer.close()
                    upstream_writer.close()

            await asyncio.gather(pump(reader, upstream_writer), pump(upstream_reader, writer))

        server = await asyncio.start_server(relay, "127.0.0.1", 0)
        proxy_port = server.sockets[0].getsockname()[1]
        client = redis.asyncio.Redis(host="127.0.0.1", port=proxy_port, db=upstream.get("db", 0))
        try:
            group = GroupCommit(client)
            script = client.register_script(ECHO)
            await script(keys=["warm"], args=["up"])
            cut.set()
            try:
                met: object = await group.call(script, ["ran"], ["once"])
            except redis.ConnectionError as exc:
                met = exc
            after = await group.call(script, ["ran"], ["after"])
            return met, after
        finally:
            await client.aclose()
            server.close()
            # Each relay ends once the client's side is closed: waited for, not cancelled.
            if relays:
                await asyncio.wait(relays, timeout=5)

    met, after = asyncio.run(go())
    assert isinstance(met, redis.ConnectionError), met
    assert after == [b"ran", b"after"]
    assert redis_client.lrange("ran", 0, -1) == [b"once", b"after"]
