"""The ceilings the benchmarks compare against: a bare Starlette app that reads and parses
the body, then makes one awaited ``redis.asyncio`` write per request. JSON on
``POST /v1/sessions`` (``bench_create``), a form on ``POST /webhooks/vts/session``
(``bench_webhooks``, answered 200 ``OK`` as the service answers VTS).

Two writes, by ``BARE_WRITE``:

- ``lpush`` (the default): the raw body pushed onto a list. Nothing could consume it.
- ``enqueue``: what the least an ingest path handing work to dramatiq must do. The parsed
  request becomes a message in dramatiq's wire format (``json.dumps``, a uuid4 id), and a
  Lua script stores it and queues its id as dramatiq's Redis broker does (HSET of the
  queue's messages, RPUSH of the queue) in one atomic call, through redis-py's ``Script``.

``REDIS_URL=... [BARE_WRITE=enqueue] uvicorn --factory tests.benchmarks.bare_app:from_env``
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl

import redis.asyncio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

LIST_KEY = "bench:bare"
QUEUE = "bench-bare"
ENQUEUE = """
redis.call("HSET", KEYS[2], ARGV[1], ARGV[2])
redis.call("RPUSH", KEYS[1], ARGV[1])
"""

Write = Callable[[bytes, Any], Awaitable[Any]]


def _lpush(client: redis.asyncio.Redis) -> Write:
    async def write(raw: bytes, _: Any) -> Any:
        return await client.lpush(LIST_KEY, raw)

    return write


def _enqueue(client: redis.asyncio.Redis) -> Write:
    script = client.register_script(ENQUEUE)
    keys = [f"dramatiq:{QUEUE}", f"dramatiq:{QUEUE}.msgs"]

    async def write(_: bytes, parsed: Any) -> Any:
        message_id = str(uuid.uuid4())
        message = {
            "queue_name": QUEUE,
            "actor_name": "bare",
            "args": [parsed],
            "kwargs": {},
            "options": {"redis_message_id": message_id},
            "message_id": message_id,
            "message_timestamp": int(time.time() * 1000),
        }
        return await script(keys=keys, args=[message_id, json.dumps(message)])

    return write


async def create(request: Request) -> Response:
    raw = await request.body()
    await request.app.state.write(raw, json.loads(raw))
    return JSONResponse({"status": "pending"}, status_code=202)


async def callback(request: Request) -> Response:
    raw = await request.body()
    await request.app.state.write(raw, dict(parse_qsl(raw.decode(), keep_blank_values=True)))
    return PlainTextResponse("OK")


def create_app(redis_url: str, write: str = "lpush") -> Starlette:
    writers = {"lpush": _lpush, "enqueue": _enqueue}

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        client = redis.asyncio.Redis.from_url(redis_url)
        app.state.write = writers[write](client)
        try:
            yield
        finally:
            await client.aclose()

    routes = [
        Route("/v1/sessions", create, methods=["POST"]),
        Route("/webhooks/vts/session", callback, methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def from_env() -> Starlette:
    """uvicorn's factory."""
    return create_app(os.environ["REDIS_URL"], os.environ.get("BARE_WRITE", "lpush"))
