"""The web process: ``create_app(settings)``, or ``uvicorn --factory service.app:from_env``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis
import redis.asyncio
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service import api, deadletters, logs, media, openapi, webhooks
from service.metrics import RedisCollector
from service.middleware import BearerAuth, BodyLimit, RequestContext
from service.problems import Problem, handle_http_exception, handle_problem
from service.settings import Settings
from service.storage import LocalStorage
from service.store import AsyncRecordingStore, AsyncStore
from service.watcher import SessionWatcher

log = structlog.get_logger(__name__)


async def healthz(_: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    store: AsyncStore = request.app.state.store
    try:
        await store.ping()
    except (redis.RedisError, OSError):
        raise Problem(503, "Redis is unreachable") from None
    return JSONResponse({"status": "ready"})


async def metrics_text(request: Request) -> Response:
    """Prometheus text: this process's metrics, then what Redis knows for all processes."""
    shared: CollectorRegistry = request.app.state.shared_metrics
    body = await run_in_threadpool(lambda: generate_latest(REGISTRY) + generate_latest(shared))
    return Response(body, media_type=CONTENT_TYPE_LATEST)


async def openapi_document(_: Request) -> Response:
    return JSONResponse(openapi.document())


async def _internal_error(_: Request, exc: Exception) -> Response:
    return Problem(500, "something went wrong on our side; it has been logged").response()


async def _store_unavailable(_: Request, exc: Exception) -> Response:
    log.error("redis_unavailable", error=type(exc).__name__)
    return Problem(
        503, "storage is unavailable; retry shortly", headers={"retry-after": "1"}
    ).response()


def create_app(settings: Settings) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        client = redis.asyncio.Redis.from_url(
            settings.redis_url, socket_timeout=2, socket_connect_timeout=2, health_check_interval=30
        )
        app.state.settings = settings
        app.state.store = AsyncStore(client)
        app.state.recordings = AsyncRecordingStore(client)
        app.state.storage = LocalStorage(settings.recordings_dir)
        app.state.watcher = SessionWatcher(client, app.state.store)
        app.state.shared_metrics = CollectorRegistry()
        scrape_client = redis.Redis.from_url(settings.redis_url, socket_timeout=2)
        app.state.shared_metrics.register(RedisCollector(scrape_client, deadletters.QUEUES))
        await app.state.watcher.start()
        log.info("web_started", vts_base_url=settings.vts_base_url)
        try:
            yield
        finally:
            await app.state.watcher.stop()
            scrape_client.close()
            await client.aclose()

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/openapi.json", openapi_document, methods=["GET"]),
        Route("/metrics", metrics_text, methods=["GET"]),
        *api.routes(),
        *webhooks.routes(),
        *media.routes(),
    ]
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(RequestContext),
            Middleware(BodyLimit, limit=settings.max_body_bytes),
            Middleware(BearerAuth, keys=settings.api_keys),
        ],
        exception_handlers={
            Problem: handle_problem,
            HTTPException: handle_http_exception,
            redis.RedisError: _store_unavailable,
            ConnectionError: _store_unavailable,
            500: _internal_error,
        },
        lifespan=lifespan,
    )
    # Starlette would redirect "/path/" to "/path" with a Location built from the Host
    # header, which the client chooses: unknown paths are plain 404s instead.
    app.router.redirect_slashes = False
    return app


def from_env() -> Starlette:
    """uvicorn's factory: read the settings, configure logging, build the app."""
    settings = Settings.from_env()
    logs.configure(fmt=settings.log_format, level=settings.log_level)
    return create_app(settings)
