"""Worker process start-up: ``masking worker`` (:mod:`workers.supervisor`) calls ``setup``
in every worker process before importing the actor modules, so the broker is set before
the actors bind to it, and each process builds its own clients.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from service import egress, logs, redis_clients
from service.metrics import metrics
from service.settings import Settings
from service.storage import open_storage
from service.store import Keys, RecordingStore, Store
from service.store.apps import AppStore
from service.vts.client import VtsClient
from service.vts.ratelimit import RateLimiter
from workers import accounting as events
from workers import archive as recordings
from workers import notifications, retention, sessions
from workers.broker import create_broker
from workers.downloads import DownloadPolicy, build_client


@dataclass(frozen=True)
class Resources:
    settings: Settings
    sessions: sessions.Context
    events: events.Context
    notifications: notifications.Context
    recordings: recordings.Context
    retention: retention.Context

    def close(self) -> None:
        self.sessions.vts.close()
        self.notifications.http.close()
        self.recordings.http.close()


_resources: Resources | None = None


def resources() -> Resources:
    """This process's resources; set by ``setup`` before any actor runs."""
    if _resources is None:
        raise RuntimeError("worker resources used before workers.boot.setup() ran")
    return _resources


def install(built: Resources) -> None:
    """Make ``built`` this process's resources (``setup`` does it; tests do it too)."""
    global _resources  # noqa: PLW0603  (one per process, by dramatiq's design)
    _resources = built


def build(settings: Settings, client: redis.Redis) -> Resources:
    """The clients the actors use, sharing ``client`` (which must not decode responses)."""
    limiter = RateLimiter(
        client,
        Keys.vts_rate_limit(settings.vts_auth_id),
        limit=settings.vts_rate_limit,
        window=settings.vts_rate_window,
        on_wait=_count_wait,
    )
    vts = VtsClient(
        base_url=settings.vts_base_url,
        auth_id=settings.vts_auth_id,
        auth_token=settings.vts_auth_token.reveal(),
        limiter=limiter,
        timeout=settings.vts_timeout,
        connect_timeout=settings.vts_connect_timeout,
        observe=_observe_vts,
    )
    store = Store(client, retention=settings.session_retention)
    context = sessions.Context(
        store=store,
        vts=vts,
        public_base_url=settings.public_base_url,
        clock=_now,
        reconcile_every=timedelta(seconds=settings.reconcile_interval),
        reconcile_settle=timedelta(seconds=settings.reconcile_settle),
        update_interval=settings.session_update_interval,
        budget_window=settings.vts_rate_window,
    )
    outbound = egress.EgressPolicy.from_settings(settings)
    notifier = notifications.Context(
        store=store,
        http=egress.build_client(outbound, timeout=notifications.TIMEOUT_SECONDS),
        apps=AppStore(client),
        policy=outbound,
        recordings=RecordingStore(client),
    )
    policy = DownloadPolicy.from_settings(settings)
    recording_store, storage = RecordingStore(client), open_storage(settings)
    downloads = recordings.Context(
        store=store,
        recordings=recording_store,
        storage=storage,
        http=build_client(policy, timeout=settings.recording_timeout),
        policy=policy,
        auth=(settings.vts_auth_id, settings.vts_auth_token.reveal()),
        clock=_now,
    )
    lifecycle = retention.Context(store=store, recordings=recording_store, storage=storage)
    return Resources(
        settings, context, events.Context(store=store, clock=_now), notifier, downloads, lifecycle
    )


def _observe_vts(action: str, outcome: str, seconds: float) -> None:
    metrics().vts_calls.labels(action, outcome).inc()
    metrics().vts_seconds.labels(action).observe(seconds)


def _count_wait(seconds: float) -> None:
    metrics().rate_limit_waits.inc()
    metrics().rate_limit_wait_seconds.inc(seconds)


def _now() -> datetime:
    return datetime.now(UTC)


def setup() -> RedisBroker:
    """The dramatiq entry point: settings, logging, clients, broker."""
    settings = Settings.from_env()
    logs.configure(fmt=settings.log_format, level=settings.log_level)
    # Timeouts, so that a Redis that stops answering is an error to retry, not a hang.
    client = redis_clients.connect(
        settings.redis_url, health_check_interval=30, socket_timeout=10, socket_connect_timeout=5
    )
    install(build(settings, client))
    broker = create_broker(client)
    dramatiq.set_broker(broker)
    return broker
