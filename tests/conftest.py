"""Fixtures: a real Redis, the VTS sandbox on loopback, the web app on loopback, a real
dramatiq worker. Redis is ``REDIS_URL`` (its database 15, flushed) when set, else a private
redis-server started for the run. With CI=true, no Redis is a failure, never a skip."""

from __future__ import annotations

import asyncio
import functools
import os
import secrets
import ssl
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import dramatiq
import httpx2
import pytest
import redis
import redis.asyncio

from devkit.embedded_redis import EmbeddedRedis
from devkit.sandbox.server import SandboxConfig, create_sandbox_app, number_range
from service import logs, messages
from service.models import Session, Status
from service.settings import AppKey, Secret, Settings
from service.store import AsyncSessions, AsyncStoredEvents
from service.vts.callbacks import Event, EventIds
from tests.servers import free_port, serve
from workers.dependencies import Dependencies

API_KEY = "test-key-" + "0" * 16
AUTH_ID = "MATESTACCOUNT000001"
AUTH_TOKEN = "sandbox-token-for-tests"


def _database_15(url: str) -> str:
    """The same server, database 15: the tests flush it, so never the app's own."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return url.split("?", maxsplit=1)[0] + "?db=15"
    return urlunsplit(parts._replace(path="/15"))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis | None]:
    """The private redis-server of this run; None when the tests use ``REDIS_URL``."""
    if os.environ.get("REDIS_URL"):
        yield None
        return
    try:
        server = EmbeddedRedis(tmp_path_factory.mktemp("redis")).start()
    except RuntimeError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"no Redis for the tests: {exc}")
        pytest.skip(f"no Redis for the tests: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: EmbeddedRedis | None) -> str:
    if redis_server is not None:
        return redis_server.url
    url = _database_15(os.environ["REDIS_URL"])
    redis.Redis.from_url(url).ping()
    return url


@pytest.fixture(scope="session")
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(autouse=True)
def _clean_redis(request: pytest.FixtureRequest) -> None:
    if "redis_url" in request.fixturenames:
        client = request.getfixturevalue("redis_client")
        client.flushdb()


def wait_until(
    condition: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.02
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``. The
    default is generous: a condition met returns at once, and a machine whose cores are
    busy with other work may take many times the usual to get there."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last: {value!r:.200})")
        time.sleep(interval)


@functools.cache
def _tls() -> ssl.SSLContext:
    return httpx2.create_ssl_context()


def http_client(base_url: str, **options: Any) -> httpx2.Client:
    """A client for a test's server, 30 s timeout unless given. The clients share one TLS
    context: a new one loads the CA bundle, ~25 ms of CPU, hundreds of times a run."""
    options.setdefault("timeout", 30)
    return httpx2.Client(base_url=base_url, verify=_tls(), **options)


def sandbox_with(**options: Any) -> SandboxConfig:
    options.setdefault("number_pool", number_range(1000))
    return SandboxConfig(auth_id=AUTH_ID, auth_token=AUTH_TOKEN, **options)


@pytest.fixture
def sandbox_config(request: pytest.FixtureRequest) -> SandboxConfig:
    """The default sandbox; a test may pass another with ``indirect`` parametrisation."""
    config: SandboxConfig | None = getattr(request, "param", None)
    return config or sandbox_with()


@pytest.fixture
def sandbox_url(sandbox_config: SandboxConfig) -> Iterator[str]:
    with serve(create_sandbox_app(sandbox_config)) as url:
        yield url


@pytest.fixture
def sandbox(sandbox_url: str) -> Iterator[httpx2.Client]:
    """A client for the sandbox's control API."""
    with http_client(sandbox_url, auth=(AUTH_ID, AUTH_TOKEN)) as client:
        yield client


def make_settings(redis_url: str, vts_base_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "vts_base_url": vts_base_url,
        "vts_auth_id": AUTH_ID,
        "vts_auth_token": Secret(AUTH_TOKEN),
        "public_base_url": "http://127.0.0.1:9",
        "api_keys": (AppKey("test", Secret(API_KEY)),),
        "log_format": "json",
        "vts_timeout": 2.0,
        "vts_connect_timeout": 1.0,
        **overrides,
    }
    return Settings(**values)


def loopback_settings(redis_url: str, vts_url: str, web_port: int, **overrides: Any) -> Settings:
    """Settings for a web on ``web_port`` whose recordings and notifications may go to
    plain http on loopback (the sandbox, a test receiver): what production refuses."""
    return make_settings(
        redis_url,
        vts_url,
        public_base_url=f"http://127.0.0.1:{web_port}",
        egress_allow_http=True,
        egress_allow_private=True,
        **overrides,
    )


@pytest.fixture
def recordings_dir(tmp_path: Path) -> Path:
    return tmp_path / "recordings"


@pytest.fixture
def web_port() -> int:
    return free_port()


@pytest.fixture
def settings(redis_url: str, sandbox_url: str, web_port: int) -> Settings:
    return make_settings(redis_url, sandbox_url, public_base_url=f"http://127.0.0.1:{web_port}")


@pytest.fixture
def web_url(settings: Settings, web_port: int) -> Iterator[str]:
    from service.web.app import create_app

    with serve(create_app(settings), port=web_port) as url:
        yield url


@pytest.fixture
def admin_url(settings: Settings) -> Iterator[str]:
    """The web's internal endpoints (ADMIN_PORT's app): metrics, the internal document."""
    from service.web.app import create_admin_app

    with serve(create_admin_app(settings)) as url:
        yield url


@pytest.fixture
def api(web_url: str) -> Iterator[httpx2.Client]:
    """A client of the app API; each answer is checked against the OpenAPI documents."""
    from tests import contract

    headers = {"Authorization": f"Bearer {API_KEY}"}
    hooks = {"response": [contract.check]}
    with http_client(web_url, headers=headers, timeout=40, event_hooks=hooks) as client:
        yield client


@pytest.fixture(scope="session")
def broker(redis_url: str) -> dramatiq.Broker:
    """The session's broker; the actors bind to it once, on first import."""
    from workers.broker import create_broker

    broker = create_broker(redis.Redis.from_url(redis_url))
    dramatiq.set_broker(broker)
    import workers.actors  # noqa: F401  (declares the actors on this broker)

    return broker


@pytest.fixture
def deps(redis_url: str, redis_client: redis.Redis, recordings_dir: Path) -> Iterator[Dependencies]:
    """A worker's dependencies, for calling work functions directly: a test swaps in its
    clock or VTS client with ``dataclasses.replace`` (VTS is unreachable otherwise)."""
    from workers import boot

    settings = make_settings(redis_url, "http://127.0.0.1:9", recordings_dir=recordings_dir)
    built = boot.build(settings, redis_client)
    yield built
    built.close()


@pytest.fixture
def worker(
    broker: dramatiq.Broker, settings: Settings, redis_client: redis.Redis
) -> Iterator[dramatiq.Worker]:
    """A real dramatiq worker (threads in this process) with dependencies for ``settings``
    (closed when it stops)."""
    from workers import boot

    broker.dependencies = boot.build(settings, redis_client)  # type: ignore[attr-defined]
    worker = dramatiq.Worker(broker, worker_threads=8, worker_timeout=50)
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()
        # Each Worker adds its own middleware to the broker; this broker outlives it.
        broker.middleware[:] = [
            m for m in broker.middleware if type(m).__name__ != "_WorkerMiddleware"
        ]


def new_numbers() -> tuple[str, str]:
    """Two valid, distinct US numbers (in 415-2xx-xxxx, which phonenumbers accepts)."""
    a, b = secrets.randbelow(10**6), secrets.randbelow(10**6)
    return f"+1415{2000000 + a:07d}", f"+1415{3000000 + b:07d}"


def data_dir() -> Path:
    return Path(__file__).parent / "data"


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is now, so pytest captures each test's lines."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return False


def configure_test_logs() -> None:
    """JSON lines to the current stderr (captured by pytest), loggers never cached."""
    logs.configure(
        fmt="json",
        level="INFO",
        stream=_CurrentStderr(),  # type: ignore[arg-type]
        cache_loggers=False,
    )


@pytest.fixture(scope="session", autouse=True)
def _structured_logs() -> None:
    configure_test_logs()


class Clock:
    """A clock that stands still until a test moves it (``clock.moment += ...``)."""

    def __init__(self) -> None:
        self.moment = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.moment


def event_id(event: Event) -> str:
    """The id the web stores ``event`` under, with the tests' VTS token."""
    return EventIds(AUTH_TOKEN).of(event)


def store_event(redis_url: str, event: Event) -> str:
    """Make a callback durable and queue it, as the web does; return its id."""
    stored_as = event_id(event)

    async def go() -> None:
        client = redis.asyncio.Redis.from_url(redis_url)
        message = messages.APPLY_EVENT.message(messages.EventRef(stored_as))
        received_ms = int(datetime.now(UTC).timestamp() * 1000)
        await AsyncStoredEvents(client).ingest_webhook(
            event, [stored_as], message, nonce=None, received_ms=received_ms
        )
        await client.aclose()

    asyncio.run(go())
    return stored_as


def stored_session(redis_url: str, session_id: str) -> Session:
    """Store a new pending session and queue its create, as the web does; return it."""
    moment = datetime.now(UTC)
    session = Session(
        id=session_id,
        status=Status.PENDING,
        first_party="+14155552671",
        second_party="+14155552672",
        created_at=moment,
        updated_at=moment,
    )

    async def go() -> None:
        client = redis.asyncio.Redis.from_url(redis_url)
        message = messages.CREATE_SESSION.message(messages.SessionRef(session.id))
        await AsyncSessions(client).create_session(
            session, message, idempotency=None, idempotency_ttl=60
        )
        await client.aclose()

    asyncio.run(go())
    return session
