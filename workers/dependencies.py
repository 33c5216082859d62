"""What the workers' jobs and middleware use: one object per worker process.

``workers.boot.build`` makes it in dramatiq's ``setup``; the broker carries it, so every
actor and every middleware reaches it the same way (:func:`of`, from the broker they run
on); it is closed once the worker has shut down. Work functions take it as their first
argument, and tests pass one with fakes swapped in (``dataclasses.replace``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import dramatiq
import httpx2

from service.egress import EgressPolicy
from service.messages import Job
from service.redis_clients import Replicas
from service.storage import Storage
from service.store import (
    DeadLetters,
    Queue,
    RecordingStore,
    Retention,
    Schedule,
    Sessions,
    StoredEvents,
)
from service.store.apps import AppStore
from service.store.endpoints import EndpointHealth
from service.store.notifications import NotificationStore
from service.vts.client import VtsClient
from service.vts.ratelimit import RateLimiter
from workers.downloads import DownloadPolicy
from workers.leases import LEASE


@dataclass(frozen=True)
class Dependencies:
    """The worker process's clients, stores (one per concept) and clock, and the timings
    of its work.

    It owns the HTTP clients it holds (:meth:`close`); the Redis client under the stores
    is the broker's, closed with it.
    """

    sessions: Sessions
    events: StoredEvents
    schedule: Schedule
    queue: Queue
    dead_letters: DeadLetters
    retention: Retention
    # Where the work's writes must be before its message is acknowledged.
    replicas: Replicas
    recordings: RecordingStore
    apps: AppStore
    notifications: NotificationStore
    endpoints: EndpointHealth
    storage: Storage
    vts: VtsClient
    # Where VTS calls us back (our public base URL).
    public_base_url: str
    # Notifications to the apps' receivers, under the egress policy.
    receivers: httpx2.Client
    egress: EgressPolicy
    # Recordings fetched from VTS, under the download policy, with VTS's credentials.
    downloads: httpx2.Client
    download_policy: DownloadPolicy
    vts_auth: tuple[str, str]
    clock: Callable[[], datetime]
    # The timings below come from the settings (``workers.boot.build``), whose defaults
    # are the only ones.
    reconcile_every: timedelta
    # How long a difference with VTS must hold still before it counts as drift: longer
    # than a callback takes to reach us and be applied, a dead worker's recovery included.
    reconcile_settle: timedelta
    # The least time between two VTS updates of one session, and the window of the apps'
    # VTS budgets (seconds): see ``workers.sessions.update``.
    update_interval: float
    budget_window: float
    # How long a recording waits for its storage to come back before it is failed.
    storage_retry_for: timedelta
    # Seconds before each retry of a notification (see ``workers.notifications``).
    notification_retry_schedule: tuple[float, ...]
    # Seconds an endpoint may fail every attempt before it is disabled.
    notification_disable_after: float
    lock_lease: timedelta = LEASE
    # How long VTS may answer 404 for a recording it told us about.
    recording_ready_within: timedelta = timedelta(minutes=10)
    # Jobs whose retry limit the settings set (job name -> max retries).
    retry_limits: Mapping[str, int] = field(default_factory=dict)
    # Reconciliation's own share of the VTS rate (None: no share of its own, as in tests).
    reconcile_budget: RateLimiter | None = None

    def max_retries(self, job: Job[Any]) -> int:
        return self.retry_limits.get(job.name, job.retry.max_retries)

    def close(self) -> None:
        """Close the HTTP clients (idempotent)."""
        self.vts.close()
        self.receivers.close()
        self.downloads.close()


def of(broker: dramatiq.Broker) -> Dependencies:
    """The dependencies ``broker`` carries; set by ``workers.boot.setup`` before any actor
    or middleware runs."""
    found: Dependencies | None = getattr(broker, "dependencies", None)
    if found is None:
        raise RuntimeError("worker dependencies used before workers.boot.setup() ran")
    return found
