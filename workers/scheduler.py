"""Long timers (expiry, periodic reconciliation, an update held back until the session's
update interval has passed) live in a Redis sorted set, not in
dramatiq's delayed messages (which can be duplicated and are held in worker memory).

Every worker process runs a ``Scheduler`` thread; one of them at a time holds the lead
(a Redis key with a short TTL, renewed while alive) and turns due entries into messages.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import dramatiq
import redis
import structlog
from dramatiq.middleware import Middleware

from service import messages
from workers import dependencies
from workers.dependencies import Dependencies
from workers.sweep import TimerSweep

log = structlog.get_logger(__name__)

TICK_SECONDS = 0.5
LEAD_TTL_MS = 5_000
RECOVER_EVERY_SECONDS = 5.0


class Scheduler(Middleware):
    """Starts the scheduler thread when a worker process boots, stops it at shutdown."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._token = uuid.uuid4().hex
        self._thread: threading.Thread | None = None
        self._recovered_at = 0.0
        self._sweep = TimerSweep()

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(broker,), daemon=True)
        self._thread.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self, broker: dramatiq.Broker) -> None:
        while not self._stop.wait(TICK_SECONDS):
            try:
                self.tick(dependencies.of(broker), broker)
            except (redis.RedisError, OSError) as exc:
                log.warning("scheduler_tick_failed", error=type(exc).__name__)

    def tick(self, deps: Dependencies, broker: dramatiq.Broker) -> int:
        """If this process leads, enqueue what is due; return how many."""
        if not deps.schedule.lead(self._token, LEAD_TTL_MS):
            return 0
        due = deps.schedule.take_due(deps.clock())
        if due:
            deps.queue.enqueue(*(_message(task, session_id) for task, session_id in due))
        self._recover(broker)
        self._sweep.maybe_step(deps)
        return len(due)

    def _recover(self, broker: dramatiq.Broker) -> None:
        recover = getattr(broker, "recover_abandoned", None)
        if recover is not None and time.monotonic() - self._recovered_at >= RECOVER_EVERY_SECONDS:
            self._recovered_at = time.monotonic()
            recover()


def _message(task: str, session_id: str) -> messages.Outgoing:
    """The message of the job that the timer ``task`` runs for the session."""
    job = messages.TIMERS[task]
    return job.message(job.payload(session_id))
