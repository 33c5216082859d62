"""The dramatiq broker on Redis, with every middleware named explicitly."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any

import dramatiq
import redis
import structlog
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    CurrentMessage,
    Middleware,
    Pipelines,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)

from service.metrics import metrics
from service.phones import mask_text
from service.store import DRAMATIQ_NAMESPACE, Store
from workers.scheduler import Scheduler

log = structlog.get_logger(__name__)

# Above dramatiq's 10 minutes of patience nothing good happens: our actors make one or two
# HTTP calls with their own timeouts.
TIME_LIMIT_MS = 5 * 60_000
# A worker process heartbeats on every broker call (at least every 100 ms: see
# PromptRedisBroker), so 15 s of silence means it is gone and its messages can go back.
HEARTBEAT_TIMEOUT_MS = 15_000


class LogContext(Middleware):
    """Binds the correlation ids for every log line of a message, and logs its outcome.

    The request id and the app that asked come from the message options, set by the web
    when it enqueued.
    """

    def __init__(self, store: Store) -> None:
        self._local = threading.local()
        self._store = store

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        structlog.contextvars.clear_contextvars()
        subject = str(message.args[0]) if message.args else ""
        # Session work names the session; event work names the stored callback.
        ids = {"session_id": subject} if subject.startswith("ses_") else {"event_id": subject}
        if "app" in message.options:
            ids["app"] = message.options["app"]
        structlog.contextvars.bind_contextvars(
            message_id=message.message_id,
            actor=message.actor_name,
            request_id=message.options.get("request_id"),
            **ids,
        )
        self._local.started = time.monotonic()

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        seconds = time.monotonic() - self._local.started
        duration_ms = round(seconds * 1000, 1)
        outcome = "ok" if exception is None else type(exception).__name__
        metrics().messages.labels(message.actor_name, _kind_of(exception)).inc()
        if exception is not None and message.failed:
            self._note_dead_letter(message, exception)
        metrics().message_seconds.labels(message.actor_name).observe(seconds)
        log.info(
            "message_processed",
            outcome=outcome,
            retries=message.options.get("retries", 0),
            duration_ms=duration_ms,
        )
        structlog.contextvars.clear_contextvars()

    def _note_dead_letter(self, message: MessageProxy, exception: BaseException) -> None:
        error = mask_text(f"{type(exception).__name__}: {exception}")[:500]
        log.error("message_dead_lettered", error=error)
        self._store.note_dead_letter(message.options["redis_message_id"], error)

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        structlog.contextvars.clear_contextvars()


def _kind_of(exception: BaseException | None) -> str:
    if exception is None:
        return "ok"
    return "retry" if isinstance(exception, dramatiq.Retry) else "failed"


class MaskTracebacks(Middleware):
    """Masks phone numbers in the traceback the Retries middleware stores in the message.

    Our exceptions never carry numbers, but a library's might; the traceback travels back
    to Redis and into the dead-letter queue.
    """

    def before_enqueue(
        self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int | None
    ) -> None:
        traceback = message.options.get("traceback")
        if isinstance(traceback, str):
            message.options["traceback"] = mask_text(traceback)


class PromptRedisBroker(RedisBroker):
    """dramatiq's Redis broker, polling an idle queue at least every ``max_poll_ms``.

    The stock consumer backs off up to the worker timeout (1 s, not settable from the
    CLI) when a queue is empty, so the first message after a quiet spell could wait that
    long; apps waiting on ``Prefer: wait`` and callbacks want far less.
    """

    max_poll_ms = 100

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> Any:
        return super().consume(queue_name, prefetch, min(timeout, self.max_poll_ms))

    def recover_abandoned(self) -> None:
        """Put back on their queues, now, the messages held by workers whose heartbeat has
        stopped (a SIGKILLed process). dramatiq does this only on a random 0.1% of broker
        calls, so on a quiet queue it might never happen."""
        dispatch = self.scripts["dispatch"]
        for queue_name in self.get_declared_queues() | self.get_declared_delay_queues():
            # "ack" of an id nobody holds does nothing; the "1" runs the maintenance.
            dispatch(
                args=[
                    "ack",
                    int(time.time() * 1000),
                    queue_name,
                    self.broker_id,
                    self.heartbeat_timeout,
                    self.dead_message_ttl,
                    1,
                    self._max_unpack_size(),  # type: ignore[no-untyped-call]
                    "-",
                ],
                keys=[self.namespace],
            )


def create_broker(client: redis.Redis) -> RedisBroker:
    """A broker sharing ``client`` (which must not decode responses)."""
    store = Store(client)
    middleware = [
        AgeLimit(),
        TimeLimit(time_limit=TIME_LIMIT_MS),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        # dramatiq runs after_* hooks in reverse order: placed before Retries, LogContext
        # sees a message after Retries has decided its fate (retried, or dead-lettered).
        LogContext(store),
        Retries(max_retries=20, min_backoff=500, max_backoff=60_000),
        CurrentMessage(),
        MaskTracebacks(),
        Scheduler(lambda: store, clock=lambda: datetime.now(UTC)),
    ]
    return PromptRedisBroker(  # type: ignore[no-untyped-call]
        client=client,
        namespace=DRAMATIQ_NAMESPACE,
        middleware=middleware,
        heartbeat_timeout=HEARTBEAT_TIMEOUT_MS,
    )
