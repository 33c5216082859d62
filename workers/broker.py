"""The dramatiq broker on Redis, with every middleware named explicitly."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import dramatiq
import redis
import structlog
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.errors import ConnectionClosed
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
from service.store import DRAMATIQ_NAMESPACE, DeadLetters
from workers import dependencies
from workers.dependencies import Dependencies
from workers.scheduler import Scheduler

log = structlog.get_logger(__name__)

# Above dramatiq's 10 minutes of patience nothing good happens: our actors make one or two
# HTTP calls with their own timeouts.
TIME_LIMIT_MS = 5 * 60_000
# A worker process heartbeats at least every HEARTBEAT_SECONDS (see
# PromptRedisBroker.do_fetch), so 15 s of silence means it is gone and its messages can go
# back: 7 missed heartbeats, room for a process starved of CPU for a while.
HEARTBEAT_TIMEOUT_MS = 15_000
HEARTBEAT_SECONDS = 2.0


class LogContext(Middleware):
    """Binds the correlation ids for every log line of a message, and logs its outcome.

    The request id and the app that asked come from the message options, set by the web
    when it enqueued.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        structlog.contextvars.clear_contextvars()
        ids = _subject(message.args)
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
            self._note_dead_letter(dependencies.of(broker).dead_letters, message, exception)
        metrics().message_seconds.labels(message.actor_name).observe(seconds)
        log.info(
            "message_processed",
            outcome=outcome,
            retries=message.options.get("retries", 0),
            duration_ms=duration_ms,
        )
        structlog.contextvars.clear_contextvars()

    def _note_dead_letter(
        self, dead_letters: DeadLetters, message: MessageProxy, exception: BaseException
    ) -> None:
        # A Retry given up stands for the failure it retried: name that one.
        cause = exception.__cause__ if isinstance(exception, dramatiq.Retry) else None
        failure = cause or exception
        error = mask_text(f"{type(failure).__name__}: {failure}")[:500]
        log.error("message_dead_lettered", error=error, exc_info=failure)
        try:
            dead_letters.note_dead_letter(message.options["redis_message_id"], error)
        except redis.RedisError as exc:
            log.warning("dead_letter_note_failed", reason=type(exc).__name__)

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        structlog.contextvars.clear_contextvars()


def _subject(args: Sequence[Any]) -> dict[str, str]:
    """The ids a message's first argument names: a session; a notification (its id
    starts with its session's); a ping; else a stored callback. None for the jobs told
    of another's given-up retries, whose argument is that whole message."""
    first = args[0] if args else None
    if not isinstance(first, str):
        return {}
    if first.startswith("ses_"):
        session_id, dot, _ = first.partition(".")
        return (
            {"session_id": session_id, "notification_id": first} if dot else {"session_id": first}
        )
    if first.startswith("ping_"):
        return {"ping_id": first}
    return {"event_id": first}


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


class GuardedConsumer(_RedisConsumer):
    """dramatiq's Redis consumer, made safe against Redis going away under a live worker.

    dramatiq 2.2.1 loses track of messages when the connection fails (see
    docs/operations.md, "dramatiq under Redis faults"): the consumer thread throws away
    its in-memory delay queue, leaving those messages in this worker's acks set until the
    process dies; a ``close()`` whose requeue fails kills the consumer thread; and an ack
    that fails with anything but a connection error (a timeout, Redis still loading its
    AOF) is never retried. Here every Redis error is a connection error to dramatiq (so
    acks are retried), the delayed messages this consumer handed out are remembered until
    acked, a batch fetched but not yet handed out goes back when the consumer closes,
    whatever cannot be put back now is put back by the queue's next consumer, and after a
    failed connection the next consumer puts back what a fetch whose reply was lost left
    in this worker's acks set (see ``PromptRedisBroker.put_back_unheld``).
    """

    broker: PromptRedisBroker

    def __init__(self, broker: PromptRedisBroker, queue_name: str, prefetch: int, timeout: int):
        super().__init__(broker, queue_name, prefetch, timeout)  # type: ignore[no-untyped-call]
        self._delayed: dict[str, MessageProxy] = {}

    def __next__(self) -> MessageProxy | None:
        try:
            self.broker.put_back_stranded(self.queue_name)
            if not self.message_cache:
                self.broker.put_back_unheld(self.queue_name)
            message: MessageProxy | None = super().__next__()  # type: ignore[no-untyped-call]
        except ConnectionClosed:  # dramatiq's own translation of redis.ConnectionError
            self.broker.connection_failed(self.queue_name)
            raise
        except redis.RedisError as exc:
            self.broker.connection_failed(self.queue_name)
            raise ConnectionClosed(exc) from None  # type: ignore[no-untyped-call]
        if message is not None:
            self.broker.hold(self.queue_name, message.options["redis_message_id"])
            if "eta" in message.options:
                self._delayed[message.options["redis_message_id"]] = message
        return message

    def ack(self, message: MessageProxy) -> None:
        self._settled(message)
        try:
            super().ack(message)  # type: ignore[no-untyped-call]
        except redis.RedisError as exc:
            raise ConnectionClosed(exc) from None  # type: ignore[no-untyped-call]
        # Only once Redis has it: until then the message is this worker's.
        self.broker.release(self.queue_name, [message.options["redis_message_id"]])

    def nack(self, message: MessageProxy) -> None:
        self._settled(message)
        try:
            super().nack(message)  # type: ignore[no-untyped-call]
        except redis.RedisError as exc:
            raise ConnectionClosed(exc) from None  # type: ignore[no-untyped-call]
        self.broker.release(self.queue_name, [message.options["redis_message_id"]])

    def requeue(self, messages: Iterable[MessageProxy]) -> None:
        held = list(messages)
        for message in held:
            self._settled(message)
        redis_ids = [m.options["redis_message_id"] for m in held]
        self.broker.put_back(self.queue_name, redis_ids)
        self.broker.release(self.queue_name, redis_ids)

    def close(self) -> None:
        """Put back the delayed messages still held (dramatiq may have dropped them) and
        the rest of the last fetched batch, which dramatiq leaves in the acks set."""
        fetched = [dramatiq.Message.decode(data) for data in self.message_cache if data]
        self.message_cache = []
        self.requeue(list(self._delayed.values()))
        self.broker.put_back(self.queue_name, [m.options["redis_message_id"] for m in fetched])

    def _settled(self, message: MessageProxy) -> None:
        self._delayed.pop(message.options.get("redis_message_id", ""), None)


class PromptRedisBroker(RedisBroker):
    """dramatiq's Redis broker, polling an idle queue at least every ``max_poll_ms``, with
    consumers that survive Redis going away (``GuardedConsumer``) and an enqueue that
    waits for Redis to come back rather than fail. It carries the process's
    ``dependencies`` for its actors and middleware (see :mod:`workers.dependencies`).

    The stock consumer backs off up to the worker timeout (1 s, not settable from the
    CLI) when a queue is empty, so the first message after a quiet spell could wait that
    long; apps waiting on ``Prefer: wait`` and callbacks want far less. Each poll of an
    empty queue is a read (``LLEN``): dramatiq's fetch writes the process's heartbeat
    every time, which for 8 queues polled 10 times a second was ~100 writes a second per
    idle process, each replicated and appended to the AOF.
    """

    max_poll_ms = 100
    # How often a consumer compares this worker's acks set with what it holds.
    acks_check_seconds = 10.0
    # An enqueue from a worker (a retry, a delayed message coming due, a timer) is tried
    # until Redis takes it: failing it would lose a message dramatiq has already acked.
    enqueue_backoff_seconds = (0.1, 2.0)

    def __init__(self, *args: Any, dependencies: Dependencies | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self.dependencies = dependencies
        self._stranded: dict[str, set[str]] = {}
        # Per queue: the redis ids of messages handed out and not yet settled, and whether
        # the queue's connection has failed since its acks set was last checked.
        self._held: dict[str, set[str]] = {}
        self._suspect: set[str] = set()
        self._acks_checked: dict[str, float] = {}
        self._stranded_lock = threading.Lock()
        self._beaten_at = 0.0

    @property
    def consumer_class(self) -> type[GuardedConsumer]:
        return GuardedConsumer

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> Any:
        return super().consume(queue_name, prefetch, min(timeout, self.max_poll_ms))

    def do_fetch(self, queue_name: str, prefetch: int) -> list[bytes | None]:
        """dramatiq's fetch (which also writes the heartbeat), skipped while the queue is
        empty and the last heartbeat is recent: then nothing is written."""
        now = time.monotonic()
        with self._stranded_lock:
            due = now - self._beaten_at >= HEARTBEAT_SECONDS
            if due:
                self._beaten_at = now
        if not due and not self.client.llen(f"{self.namespace}:{queue_name}"):
            return []
        # dramatiq makes its do_* commands in __getattr__.
        fetch = super().__getattr__("do_fetch")  # type: ignore[no-untyped-call]
        fetched: list[bytes | None] = fetch(queue_name, prefetch)
        return fetched

    def enqueue(self, message: dramatiq.Message[Any], *, delay: int | None = None) -> Any:
        pause, longest = self.enqueue_backoff_seconds
        while True:
            try:
                return super().enqueue(message, delay=delay)
            except redis.RedisError as exc:
                log.warning("broker_enqueue_waiting_for_redis", error=type(exc).__name__)
                time.sleep(pause)
                pause = min(pause * 2, longest)

    def put_back(self, queue_name: str, redis_ids: list[str]) -> None:
        """Move messages this worker holds back onto ``queue_name``; if Redis cannot take
        them now, the queue's next consumer does it."""
        if not redis_ids:
            return
        try:
            self.do_requeue(queue_name, *redis_ids)
        except redis.RedisError:
            with self._stranded_lock:
                self._stranded.setdefault(queue_name, set()).update(redis_ids)

    def hold(self, queue_name: str, redis_id: str) -> None:
        """Note a message handed out to this worker, until it is acked, nacked or put back."""
        with self._stranded_lock:
            self._held.setdefault(queue_name, set()).add(redis_id)

    def release(self, queue_name: str, redis_ids: list[str]) -> None:
        with self._stranded_lock:
            self._held.get(queue_name, set()).difference_update(redis_ids)

    def connection_failed(self, queue_name: str) -> None:
        """A command of ``queue_name``'s consumer failed: a fetch may have run in Redis
        whose reply never arrived."""
        with self._stranded_lock:
            self._suspect.add(queue_name)

    def put_back_unheld(self, queue_name: str) -> None:
        """Put back what this worker's acks set holds for ``queue_name`` but nothing in the
        worker does: the messages of a fetch that ran in Redis while its reply was lost
        (Redis went away, or redis-py's own retry sent the fetch again). dramatiq would
        keep them until this process dies. Checked after a failed connection and every
        ``acks_check_seconds``; called by the queue's consumer between batches; raises
        RedisError."""
        now = time.monotonic()
        with self._stranded_lock:
            due = now - self._acks_checked.get(queue_name, now) >= self.acks_check_seconds
            if queue_name not in self._suspect and not due:
                self._acks_checked.setdefault(queue_name, now)
                return
            self._acks_checked[queue_name] = now
        acks = f"{self.namespace}:__acks__.{self.broker_id}.{queue_name}"
        in_acks = {_text(member) for member in self.client.smembers(acks)}
        with self._stranded_lock:
            unheld = in_acks - self._held.get(queue_name, set())
            self._suspect.discard(queue_name)
        if unheld:
            # A message acked meanwhile is no longer in the acks set: requeue skips it.
            self.do_requeue(queue_name, *unheld)
            log.info("broker_messages_put_back", queue=queue_name, count=len(unheld))

    def put_back_stranded(self, queue_name: str) -> None:
        """Put back what an earlier consumer of ``queue_name`` could not; raises RedisError."""
        with self._stranded_lock:
            stranded = self._stranded.pop(queue_name, set())
        if not stranded:
            return
        try:
            self.do_requeue(queue_name, *stranded)
        except redis.RedisError:
            with self._stranded_lock:
                self._stranded.setdefault(queue_name, set()).update(stranded)
            raise
        log.info("broker_messages_put_back", queue=queue_name, count=len(stranded))

    def recover_abandoned(self) -> None:
        """Put back on their queues, now, the messages held by workers whose heartbeat has
        stopped (a SIGKILLed process). dramatiq does this only on a random 0.1% of broker
        calls, so on a quiet queue it might never happen. Its maintenance writes a
        heartbeat per queue, so it runs only when there is something to do."""
        dispatch = self.scripts["dispatch"]
        now_ms = int(time.time() * 1000)
        heartbeats = f"{self.namespace}:__heartbeats__"
        dead = self.client.zcount(heartbeats, 0, now_ms - self.heartbeat_timeout)
        for queue_name in self.get_declared_queues() | self.get_declared_delay_queues():
            if not dead and not self._has_expired_dead_letters(queue_name, now_ms):
                continue
            # "ack" of an id nobody holds does nothing; the "1" runs the maintenance.
            dispatch(
                args=[
                    "ack",
                    now_ms,
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

    def _has_expired_dead_letters(self, queue_name: str, now_ms: int) -> bool:
        """Whether the maintenance has dead letters of ``queue_name`` to drop (as
        dispatch.lua names its dead-letter set)."""
        dead_letters = f"{self.namespace}:{queue_name.removesuffix('.DQ')}.XQ"
        return bool(self.client.zcount(dead_letters, 0, now_ms - self.dead_message_ttl))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class QuietRetries(Retries):
    """dramatiq's Retries, without its info line for every retry: the actors log one
    ``work_retrying`` line with the reason instead, and dramatiq's line (a message id and
    a delay) reads like a failure to whoever tails the logs."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.logger.setLevel(logging.WARNING)


class CloseDependencies(Middleware):
    """Closes the broker's dependencies once the worker has shut down: after its actors
    have finished (dramatiq's ``before_worker_shutdown`` comes before they have, and an
    actor still downloading would lose its client under it)."""

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        found: Dependencies | None = getattr(broker, "dependencies", None)
        if found is not None:
            found.close()


def create_broker(client: redis.Redis, deps: Dependencies | None = None) -> PromptRedisBroker:
    """A broker sharing ``client`` (which must not decode responses), carrying ``deps``
    (tests may give them later: ``broker.dependencies = ...``)."""
    middleware = [
        AgeLimit(),
        TimeLimit(time_limit=TIME_LIMIT_MS),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        # dramatiq runs after_* hooks in reverse order: placed before Retries, LogContext
        # sees a message after Retries has decided its fate (retried, or dead-lettered).
        LogContext(),
        # No policy of its own: every actor brings its job's (see service.messages); one
        # that brought none would not be retried.
        QuietRetries(max_retries=0),
        CurrentMessage(),
        MaskTracebacks(),
        Scheduler(),
        CloseDependencies(),
    ]
    return PromptRedisBroker(
        client=client,
        namespace=DRAMATIQ_NAMESPACE,
        middleware=middleware,
        heartbeat_timeout=HEARTBEAT_TIMEOUT_MS,
        dependencies=deps,
    )
