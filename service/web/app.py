"""The web process: ``create_app(settings)`` (the public port) and
``create_admin_app(settings)`` (``ADMIN_PORT``), both served by ``masking web`` with the
web's limits. ``uvicorn --factory service.web.app:from_env`` serves the public app alone,
with neither the limits nor the internal endpoints."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
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
from starlette.routing import BaseRoute, Route

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
from service.web.endpoints import ExactRouter, Routed
from service.web.middleware import BearerAuth, BodyLimit, RequestContext
from service.web.operations import ApiRoute, Operation, headers, path_parameter, problem
from service.web.problems import (
    TYPES,
    Problem,
    handle_http_exception,
    handle_problem,
    problem_type,
)
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


async def openapi_document(request: Request) -> Response:
    """The app's OpenAPI document, built by its factory from the routes."""
    return JSONResponse(request.app.state.openapi)


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


def _probe(
    operation_id: str, summary: str, failures: Mapping[str, Any] | None = None
) -> dict[str, Operation]:
    status = {
        "type": "object",
        "properties": {"status": {"type": "string"}},
        "required": ["status"],
    }
    ok = {
        "description": "ok",
        "headers": headers(),
        "content": {"application/json": {"schema": status}},
    }
    answers = {"200": ok, **(failures or {})}
    return {"GET": Operation(id=operation_id, summary=summary, anonymous=True, responses=answers)}


def _metrics(operation_id: str, summary: str) -> dict[str, Operation]:
    text = {"text/plain": {"schema": {"type": "string"}}}
    ok = {"description": "Prometheus text exposition format", "content": text}
    return {
        "GET": Operation(id=operation_id, summary=summary, internal=True, responses={"200": ok})
    }


def _problem_types() -> ApiRoute:
    page = {"text/html": {"schema": {"type": "string"}}}
    read = Operation(
        id="getProblemType",
        summary="What a problem type means: each problem's `type` is this URL",
        anonymous=True,
        responses={
            "200": {
                "description": "a short page for people",
                "headers": headers(),
                "content": page,
            },
            "404": problem("no such problem type"),
        },
    )
    name = path_parameter("name", {"type": "string", "enum": sorted(TYPES)})
    return ApiRoute("/problems/{name}", problem_type, {"GET": read}, parameters=[name])


def _public_routes() -> list[BaseRoute]:
    """The public port's routes. No two groups share a path, and the busiest come first
    (callbacks, then the API): paths with parameters are tried in turn."""
    ready, unreachable = "Readiness: Redis reachable", problem("Redis unreachable")
    return [
        *webhooks.routes(),
        *api.routes(),
        *notifications.routes(),
        *media.routes(),
        ApiRoute("/healthz", healthz, _probe("getHealth", "Liveness")),
        ApiRoute("/readyz", readyz, _probe("getReadiness", ready, {"503": unreachable})),
        Route("/openapi.json", openapi_document, methods=["GET"], include_in_schema=False),
        _problem_types(),
    ]


def _admin_routes() -> list[BaseRoute]:
    cluster = "Prometheus metrics Redis holds for all processes: scrape once per cluster"
    return [
        ApiRoute(
            "/metrics", metrics_text, _metrics("getMetrics", "Prometheus metrics of this process")
        ),
        ApiRoute("/metrics/cluster", cluster_metrics_text, _metrics("getClusterMetrics", cluster)),
        Route("/openapi-internal.json", openapi_document, methods=["GET"], include_in_schema=False),
        _problem_types(),
    ]


def _routed(routes: list[BaseRoute]) -> list[BaseRoute]:
    """``routes`` behind one ExactRouter, which the app hands every request (``Routed``):
    paths without parameters are looked up, and slashes are not redirected."""
    return [Routed(ExactRouter(routes, redirect_slashes=False))]


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

    routes = _public_routes()
    app = Starlette(
        routes=_routed(routes),
        middleware=[
            Middleware(RequestContext),
            Middleware(BodyLimit, limit=settings.max_body_bytes),
            Middleware(BearerAuth, apps=registry),
        ],
        exception_handlers=_EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.openapi = openapi.document(routes)
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

    routes = _admin_routes()
    app = Starlette(
        routes=_routed(routes),
        middleware=[Middleware(RequestContext)],
        exception_handlers=_EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    # VTS calls its routes on the public port; the document for it and operators is here.
    app.state.openapi = openapi.internal_document([*_public_routes(), *routes])
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
