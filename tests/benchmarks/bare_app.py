"""The ceilings the benchmarks compare against: a bare Starlette app that reads and parses
the body, then makes one awaited ``redis.asyncio`` write (LPUSH) per request. JSON on
``POST /v1/sessions`` (``bench_create``), a form on ``POST /webhooks/vts/session``
(``bench_webhooks``, answered 200 ``OK`` as the service answers VTS).

``REDIS_URL=... uvicorn --factory tests.benchmarks.bare_app:from_env``
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import parse_qsl

import redis.asyncio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

LIST_KEY = "bench:bare"


async def create(request: Request) -> Response:
    raw = await request.body()
    json.loads(raw)
    client: redis.asyncio.Redis = request.app.state.redis
    await client.lpush(LIST_KEY, raw)
    return JSONResponse({"status": "pending"}, status_code=202)


async def callback(request: Request) -> Response:
    raw = await request.body()
    dict(parse_qsl(raw.decode(), keep_blank_values=True))
    client: redis.asyncio.Redis = request.app.state.redis
    await client.lpush(LIST_KEY, raw)
    return PlainTextResponse("OK")


def create_app(redis_url: str) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.redis = redis.asyncio.Redis.from_url(redis_url)
        try:
            yield
        finally:
            await app.state.redis.aclose()

    routes = [
        Route("/v1/sessions", create, methods=["POST"]),
        Route("/webhooks/vts/session", callback, methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def from_env() -> Starlette:
    """uvicorn's factory."""
    return create_app(os.environ["REDIS_URL"])
