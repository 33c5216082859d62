"""The web process: ``create_app(settings)`` (the public port) and
``create_admin_app(settings)`` (``ADMIN_PORT``), both served by ``masking web`` with the
web's limits. ``uvicorn --factory service.web.app:from_env`` serves the public app alone,
with neither the limits nor the internal endpoints."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

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

from service import logs, memory, messages, redis_clients
from service.apps import AppRegistry
from service.metrics import ClusterCollector
from service.settings import Settings
from service.storage import open_storage
from service.store import (
    AsyncRecordingStore,
    AsyncSessions,
    AsyncStoredEvents,
    Erasure,
    GroupCommit,
)
from service.store.apps import AsyncAppStore
from service.store.notifications import AsyncNotificationStore
from service.web import api, media, notifications, openapi, webhooks
from service.web.endpoints import ExactRouter
from service.web.middleware import BearerAuth, BodyLimit, RequestContext
from service.web.problems import Problem, handle_http_exception, handle_problem, problem_type
from service.web.validation import Rules
from service.web.watcher import SessionWatcher

log = structlog.get_logger(__name__)


async def healthz(_: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    sessions: AsyncSessions = request.app.state.sessions
    try:
        await sessions.ping()
    except (redis.RedisError, OSError):
        raise Problem(503, "Redis is unreachable") from None
    return JSONResponse({"status": "ready"})


async def metrics_text(_: Request) -> Response:
    """Prometheus text: this process's own metrics."""
    body = await run_in_threadpool(generate_latest, REGISTRY)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


async def cluster_metrics_text(request: Request) -> Response:
    """Prometheus text: what Redis knows for every process; scrape it once per cluster."""
    cluster: CollectorRegistry = request.app.state.cluster_metrics
    body = await run_in_threadpool(generate_latest, cluster)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


async def openapi_document(_: Request) -> Response:
    return JSONResponse(openapi.document())


async def internal_openapi_document(_: Request) -> Response:
    return JSONResponse(openapi.internal_document())


async def _internal_error(request: Request, exc: Exception) -> Response:
    problem = Problem(500, "something went wrong on our side; it has been logged")
    return problem.response(request.scope)


async def _store_unavailable(request: Request, exc: Exception) -> Response:
    log.error("redis_unavailable", error=type(exc).__name__)
    problem = Problem(503, "storage is unavailable; retry shortly", headers={"retry-after": "1"})
    return problem.response(request.scope)


async def _sync_apps(registry: AppRegistry, store: AsyncAppStore) -> bool:
    """Register the configured apps and take the managed keys; False while Redis is away
    (the web still starts: configured keys work, and the next refresh tries again)."""
    try:
        await store.register(registry.configured_apps())
        registry.load(await store.managed_keys())
    except (redis.RedisError, OSError) as exc:
        if redis_clients.cancelling():
            raise asyncio.CancelledError from exc
        log.warning("apps_refresh_failed", error=type(exc).__name__)
        return False
    return True


async def _refresh_apps(registry: AppRegistry, store: AsyncAppStore, every: float) -> None:
    """Keep the registry's managed keys current, so created and revoked keys take effect
    within ``every`` seconds without a restart. While Redis is away the last keys hold."""
    while True:
        await asyncio.sleep(every)
        await _sync_apps(registry, store)


def create_app(settings: Settings) -> Starlette:
    registry = AppRegistry(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        client = redis_clients.connect_async(
            settings.redis_url, socket_timeout=2, socket_connect_timeout=2, health_check_interval=30
        )
        app.state.settings = settings
        follower = redis_clients.follow_master_async(client, settings.redis_url)
        app.state.event_ids = webhooks.event_ids(settings)
        # The web's writes share one group commit: concurrent creates and callbacks go
        # out together, and wait for the replicas once per batch.
        group = GroupCommit(client, durability=settings.durability)
        app.state.sessions = AsyncSessions(client, group=group)
        app.state.events = AsyncStoredEvents(client, group=group)
        app.state.erasure = Erasure(client, settings.durability)
        app.state.recordings = AsyncRecordingStore(client, settings.durability)
        app.state.notifications = AsyncNotificationStore(client)
        app.state.storage = open_storage(settings)
        app.state.watcher = SessionWatcher(client, app.state.sessions)
        app.state.apps = registry
        apps = AsyncAppStore(client)
        await _sync_apps(registry, apps)
        refresher = asyncio.create_task(_refresh_apps(registry, apps, settings.apps_refresh))
        await app.state.watcher.start()
        log.info("web_started", vts_base_url=settings.vts_base_url)
        try:
            yield
        finally:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
            await app.state.watcher.stop()
            if follower is not None:
                follower.stop()
            await client.aclose()

    # Paths without parameters are looked up (ExactRouter); the rest are tried in turn,
    # and no two groups share a path: the busiest first (callbacks, then the API).
    routes = [
        *webhooks.routes(),
        *api.routes(),
        *notifications.routes(),
        *media.routes(),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/openapi.json", openapi_document, methods=["GET"]),
        Route("/problems/{name}", problem_type, methods=["GET"]),
    ]
    app = Starlette(
        middleware=[
            Middleware(RequestContext),
            Middleware(BodyLimit, limit=settings.max_body_bytes),
            Middleware(BearerAuth, apps=registry),
        ],
        exception_handlers=_EXCEPTION_HANDLERS,
    )
    # Starlette would redirect "/path/" to "/path" with a Location built from the Host
    # header, which the client chooses: unknown paths are plain 404s instead.
    app.router = ExactRouter(routes, lifespan=lifespan, redirect_slashes=False)
    app.state.rules = Rules.from_settings(settings)
    # Problem types are URLs under the service's public address (see problems.py).
    app.state.public_base_url = settings.public_base_url
    return app


def create_admin_app(settings: Settings) -> Starlette:
    """The internal endpoints (metrics, the internal API document), on ``ADMIN_PORT``:
    never on the public port, which an ingress exposes to the internet."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.cluster_metrics = CollectorRegistry()
        scrape_client = redis_clients.connect(settings.redis_url, socket_timeout=2)
        app.state.cluster_metrics.register(ClusterCollector(scrape_client, messages.QUEUES))
        try:
            yield
        finally:
            scrape_client.close()

    routes = [
        Route("/metrics", metrics_text, methods=["GET"]),
        Route("/metrics/cluster", cluster_metrics_text, methods=["GET"]),
        Route("/openapi-internal.json", internal_openapi_document, methods=["GET"]),
        Route("/problems/{name}", problem_type, methods=["GET"]),
    ]
    app = Starlette(
        middleware=[Middleware(RequestContext)],
        exception_handlers=_EXCEPTION_HANDLERS,
    )
    app.router = ExactRouter(routes, lifespan=lifespan, redirect_slashes=False)
    app.state.public_base_url = settings.public_base_url
    return app


# Every error becomes a problem document; Redis away is 503, anything else a bare 500.
_EXCEPTION_HANDLERS: dict[Any, Any] = {
    Problem: handle_problem,
    HTTPException: handle_http_exception,
    redis.RedisError: _store_unavailable,
    ConnectionError: _store_unavailable,
    500: _internal_error,
}


def from_env() -> Starlette:
    """uvicorn's factory: read the settings, configure logging, build the app."""
    settings = Settings.from_env()
    logs.configure(fmt=settings.log_format, level=settings.log_level)
    app = create_app(settings)
    # The process is the web's alone: its start-up heap can be frozen (an app built
    # inside another process, as tests do, leaves that process's collector alone).
    memory.settle()
    return app
