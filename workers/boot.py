"""Worker process start-up: ``masking worker`` (:mod:`workers.supervisor`) calls ``setup``
in every worker process before importing the actor modules, so the broker is set before
the actors bind to it, and each process builds its own dependencies, which the broker
carries (see :mod:`workers.dependencies`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from service import egress, logs, messages, redis_clients
from service.metrics import metrics
from service.settings import Settings
from service.storage import open_storage
from service.store import (
    DeadLetters,
    Queue,
    RecordingStore,
    Retention,
    Schedule,
    Sessions,
    StoredEvents,
    reconcile_rate_limit_key,
    vts_rate_limit_key,
)
from service.store.apps import AppStore
from service.store.endpoints import EndpointHealth
from service.store.notifications import NotificationStore
from service.vts.client import VtsClient
from service.vts.ratelimit import RateLimiter
from workers import notifications
from workers.broker import create_broker
from workers.dependencies import Dependencies
from workers.downloads import DownloadPolicy, build_client


def build(settings: Settings, client: redis.Redis) -> Dependencies:
    """The process's dependencies, sharing ``client`` (which must not decode responses)."""
    limiter = RateLimiter(
        client,
        vts_rate_limit_key(settings.vts_auth_id),
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
    # Reconciliation grows with live sessions: it spends only its share of the account's
    # rate, so that the apps' creates keep the rest.
    reconcile_budget = RateLimiter(
        client,
        reconcile_rate_limit_key(settings.vts_auth_id),
        limit=max(1, int(settings.vts_rate_limit * settings.reconcile_rate_share)),
        window=settings.vts_rate_window,
    )
    outbound = egress.EgressPolicy.from_settings(settings)
    download_policy = DownloadPolicy.from_settings(settings)
    notification_store = NotificationStore(client)
    return Dependencies(
        sessions=Sessions(client, retention=settings.session_retention),
        events=StoredEvents(client, retention=settings.session_retention),
        schedule=Schedule(client),
        queue=Queue(client),
        dead_letters=DeadLetters(client),
        retention=Retention(client, notification_store),
        replicas=redis_clients.Replicas(client, settings.durability),
        recordings=RecordingStore(client),
        apps=AppStore(client),
        notifications=notification_store,
        endpoints=EndpointHealth(client),
        storage=open_storage(settings),
        vts=vts,
        public_base_url=settings.public_base_url,
        receivers=egress.build_client(outbound, timeout=notifications.TIMEOUT_SECONDS),
        egress=outbound,
        downloads=build_client(download_policy, timeout=settings.recording_timeout),
        download_policy=download_policy,
        vts_auth=(settings.vts_auth_id, settings.vts_auth_token.reveal()),
        clock=_now,
        reconcile_every=timedelta(seconds=settings.reconcile_interval),
        reconcile_settle=timedelta(seconds=settings.reconcile_settle),
        update_interval=settings.session_update_interval,
        budget_window=settings.vts_rate_window,
        notification_retry_schedule=settings.notification_retry_schedule,
        storage_retry_for=timedelta(seconds=settings.storage_retry_for),
        retry_limits=_retry_limits(settings),
        notification_disable_after=settings.notification_disable_after,
        reconcile_budget=reconcile_budget,
    )


def _retry_limits(settings: Settings) -> dict[str, int]:
    """The retry limits the settings set: VTS creates, and storage work (STORAGE_RETRY_FOR)."""
    limits = {messages.CREATE_SESSION.name: settings.create_max_retries}
    for job in (messages.PURGE_SESSION, messages.DELETE_RECORDING_FILES):
        limits[job.name] = job.retry.retries_within(settings.storage_retry_for)
    return limits


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
    # Daemon threads: they end with the process, whose connections they watch over.
    redis_clients.follow_master(client, settings.redis_url)
    broker = create_broker(client, build(settings, client))
    dramatiq.set_broker(broker)
    return broker
