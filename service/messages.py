"""The job contract between the web and the workers: every job is declared here, once.

A :class:`Job` names its actor and queue, the type of its payload, its retry policy and
which failures are transient. The web and the workers both enqueue through
:meth:`Job.message`, the one encoder of dramatiq's wire format (the store writes what it
returns, inside the Lua script that changes state along with it); the workers declare one
actor per job from the same declaration (a test checks both sides agree).

Payloads carry ids, never phone numbers: an actor reads what it needs from the store.
They travel as dramatiq's positional ``args`` (a payload's fields in order). The request
id and the app that asked ride in the message options, so that every worker log line can
be tied to the HTTP request that caused it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from uuid import uuid4

import msgspec
import redis

from service.errors import (
    EventNotReady,
    RecordingUnavailable,
    ServiceError,
    SessionBusy,
    SessionNotReady,
    StorageUnavailable,
    VtsUnavailable,
    WorkNotReady,
)

SESSIONS_QUEUE = "sessions"
EVENTS_QUEUE = "events"
RECORDINGS_QUEUE = "recordings"
NOTIFICATIONS_QUEUE = "notifications"
QUEUES = (SESSIONS_QUEUE, EVENTS_QUEUE, RECORDINGS_QUEUE, NOTIFICATIONS_QUEUE)

# Set in the options of a dead letter put back by an operator: work given up before may
# be taken up again (a create whose retries ran out).
REPLAY_OPTION = "replay"


# Payloads: one small struct per shape, validated when a worker decodes the message.


class SessionRef(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """Work on one session."""

    session_id: str


class EventRef(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """A stored VTS callback, and its VTS session when the web knew it (one round trip
    less for the worker)."""

    event_id: str
    session_uuid: str | None = None


class NotificationRef(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """An attempt at delivering a recorded notification; its id is the ``webhook-id``."""

    notification_id: str


class PingRef(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """A ``ping`` to send now to ``url`` for ``app``; its result goes under ``ping_id``."""

    ping_id: str
    app: str
    url: str


class Exhausted(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """What dramatiq sends a job's ``on_exhausted`` job when its retries run out: the
    given-up message (as a dict) and its retry count."""

    message: dict[str, Any]
    retry_info: dict[str, Any]


P = TypeVar("P", bound=msgspec.Struct)

# Redis is our own state: while it is away (a restart, a failover) every job waits for it
# however long that takes, and is never given up.
ALWAYS_TRANSIENT: tuple[type[Exception], ...] = (redis.RedisError,)


@dataclass(frozen=True)
class RetryPolicy:
    """When a failed job is tried again, and how soon.

    Besides Redis errors (always retried): ``waits`` are part of the work (an event whose
    session is still being created), bounded in time by the work itself, and retried as
    long as they are raised; ``outages`` too (storage away: ``STORAGE_RETRY_FOR`` bounds
    them), but they are failures, logged as warnings; ``transient`` failures are retried
    up to ``max_retries`` times. Anything else (a bug, a rejection) is never retried. The
    delay is the one the failure names (``retry_after`` in seconds: VTS's Retry-After, an
    event's short wait), else a backoff doubling from ``min_backoff_ms`` up to ``max_backoff_ms``.
    """

    transient: tuple[type[Exception], ...] = ()
    max_retries: int = 0
    waits: tuple[type[WorkNotReady], ...] = ()
    outages: tuple[type[ServiceError], ...] = ()
    min_backoff_ms: int = 500
    max_backoff_ms: int = 15_000

    @property
    def retried(self) -> tuple[type[Exception], ...]:
        """Every failure this policy may retry."""
        return (*ALWAYS_TRANSIENT, *self.waits, *self.outages, *self.transient)

    def allows(self, retries: int, failure: BaseException, *, max_retries: int) -> bool:
        """Whether ``failure`` is retried after ``retries`` retries already made."""
        if isinstance(failure, ALWAYS_TRANSIENT + self.waits + self.outages):
            return True
        return isinstance(failure, self.transient) and retries < max_retries

    def retries_within(self, seconds: float) -> int:
        """Retries enough to keep trying for at least ``seconds``: past its first doublings
        dramatiq waits between half the maximum backoff and all of it."""
        return math.ceil(seconds * 1000 / (self.max_backoff_ms / 2))


def delay_ms(failure: BaseException) -> int | None:
    """The wait ``failure`` names, in ms (None: the policy's backoff)."""
    retry_after = getattr(failure, "retry_after", None)
    return int(retry_after * 1000) if retry_after is not None else None


@dataclass(frozen=True)
class Outgoing:
    """A message encoded in dramatiq's wire format, ready for the store to enqueue."""

    queue_name: str
    message_id: str
    redis_message_id: str
    payload: bytes


@dataclass(frozen=True)
class Job(Generic[P]):
    """One kind of work: its actor's name and queue, its payload type, its retry policy,
    the job told when retries run out, and a time limit when it differs from the
    broker's."""

    name: str
    queue: str
    payload: type[P]
    retry: RetryPolicy
    on_exhausted: Job[Exhausted] | None = None
    time_limit_ms: int | None = None

    def message(
        self, payload: P, *, request_id: str | None = None, app: str | None = None
    ) -> Outgoing:
        """The message for ``payload``. ``request_id`` and ``app`` (the name of the app
        that asked) ride in the options, for the worker's log lines."""
        if type(payload) is not self.payload:
            raise TypeError(f"{self.name} takes a {self.payload.__name__}")
        options: dict[str, Any] = {}
        if request_id is not None:
            options["request_id"] = request_id
        if app is not None:
            options["app"] = app
        return encode(self.queue, self.name, msgspec.to_builtins(payload), {}, options)

    def decode(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> P:
        """The payload of a message's ``args``; raises msgspec.ValidationError when they
        do not fit, or when the message has keyword arguments (ours never do): such a
        message is never retried."""
        if kwargs:
            raise msgspec.ValidationError(f"{self.name} takes no keyword arguments")
        return msgspec.convert(args, self.payload)


def encode(
    queue_name: str,
    actor_name: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    options: Mapping[str, Any],
    *,
    message_id: str | None = None,
) -> Outgoing:
    """A message in dramatiq's wire format, with a fresh Redis id (its message id too,
    unless given: a renewed dead letter keeps its own)."""
    # One uuid4 serves as both ids: each only has to be unique, and a uuid4 costs ~2 µs.
    redis_id = str(uuid4())
    message_id = message_id or redis_id
    # dramatiq's wire format, field for field what ``dramatiq.Message(...).encode()``
    # writes with its default JSON encoder, without building the dataclass to encode it.
    fields = {
        "queue_name": queue_name,
        "actor_name": actor_name,
        "args": list(args),
        "kwargs": dict(kwargs),
        "options": {**options, "redis_message_id": redis_id},
        "message_id": message_id,
        "message_timestamp": int(time.time() * 1000),
    }
    # The same JSON as dramatiq's encoder writes (compact), readable by it; faster.
    return Outgoing(queue_name, message_id, redis_id, msgspec.json.encode(fields))


_SESSION_WORK = RetryPolicy(
    transient=(VtsUnavailable, SessionBusy, SessionNotReady), max_retries=20
)
# Bookkeeping after work is given up: only Redis can fail it, and Redis passes.
_BOOKKEEPING = RetryPolicy()
# Storage away (a full or read-only disk, S3 unreachable or throttling; boto3 has retried
# within the call already): every minute at most, for STORAGE_RETRY_FOR, which sets
# max_retries (see workers.dependencies).
_STORAGE = RetryPolicy(
    transient=(StorageUnavailable,),
    max_retries=20,
    min_backoff_ms=1_000,
    max_backoff_ms=60_000,
)

CREATE_SESSION_EXHAUSTED = Job("create_session_exhausted", SESSIONS_QUEUE, Exhausted, _BOOKKEEPING)
# VTS_CREATE_MAX_RETRIES sets its max_retries (see workers.dependencies).
CREATE_SESSION = Job(
    "create_session",
    SESSIONS_QUEUE,
    SessionRef,
    _SESSION_WORK,
    on_exhausted=CREATE_SESSION_EXHAUSTED,
)
UPDATE_SESSION_EXHAUSTED = Job("update_session_exhausted", SESSIONS_QUEUE, Exhausted, _BOOKKEEPING)
UPDATE_SESSION = Job(
    "update_session",
    SESSIONS_QUEUE,
    SessionRef,
    _SESSION_WORK,
    on_exhausted=UPDATE_SESSION_EXHAUSTED,
)
EXPIRE_SESSION = Job("expire_session", SESSIONS_QUEUE, SessionRef, _SESSION_WORK)
RECONCILE_SESSION = Job("reconcile_session", SESSIONS_QUEUE, SessionRef, _SESSION_WORK)
EXPIRE_IF_DUE = Job("expire_if_due", SESSIONS_QUEUE, SessionRef, _SESSION_WORK)
PURGE_SESSION = Job("purge_session", SESSIONS_QUEUE, SessionRef, _STORAGE)

# An event waits as long as its work says (it bounds the wait).
APPLY_EVENT = Job("apply_event", EVENTS_QUEUE, EventRef, RetryPolicy(waits=(EventNotReady,)))

RECORDING_DOWNLOAD_EXHAUSTED = Job(
    "recording_download_exhausted",
    RECORDINGS_QUEUE,
    Exhausted,
    RetryPolicy(min_backoff_ms=1_000, max_backoff_ms=60_000),
)
# Waiting for the session, or for VTS to serve the file, is bounded in time by the work,
# and so is storage being away (STORAGE_RETRY_FOR); VTS's network errors and 5xx are
# retried up to a limit.
APPLY_RECORDING_EVENT = Job(
    "apply_recording_event",
    RECORDINGS_QUEUE,
    EventRef,
    RetryPolicy(
        transient=(RecordingUnavailable,),
        max_retries=20,
        waits=(EventNotReady,),
        outages=(StorageUnavailable,),
        min_backoff_ms=1_000,
        max_backoff_ms=60_000,
    ),
    on_exhausted=RECORDING_DOWNLOAD_EXHAUSTED,
    # Long enough for a large recording over a slow link; the download has its own timeouts.
    time_limit_ms=30 * 60_000,
)
DELETE_RECORDING_FILES = Job("delete_recording_files", RECORDINGS_QUEUE, SessionRef, _STORAGE)

# One attempt per message: the next one, by the notification retry schedule, is a timer
# of its own (see workers.notifications), never a dramatiq retry.
NOTIFY_APP = Job("notify_app", NOTIFICATIONS_QUEUE, NotificationRef, RetryPolicy())

# One attempt, awaited by the web request that asked for it.
PING_ENDPOINT = Job("ping_endpoint", NOTIFICATIONS_QUEUE, PingRef, RetryPolicy())

JOBS: tuple[Job[Any], ...] = (
    CREATE_SESSION,
    CREATE_SESSION_EXHAUSTED,
    UPDATE_SESSION,
    UPDATE_SESSION_EXHAUSTED,
    EXPIRE_SESSION,
    RECONCILE_SESSION,
    EXPIRE_IF_DUE,
    PURGE_SESSION,
    APPLY_EVENT,
    APPLY_RECORDING_EVENT,
    RECORDING_DOWNLOAD_EXHAUSTED,
    DELETE_RECORDING_FILES,
    NOTIFY_APP,
    PING_ENDPOINT,
)

# The job each kind of timer in the store's schedule runs, with the timer's target: the
# session's id, or for ``notify`` the notification's.
TIMERS: Mapping[str, Job[Any]] = {
    "notify": NOTIFY_APP,
    "reconcile": RECONCILE_SESSION,
    "expire": EXPIRE_IF_DUE,
    "update": UPDATE_SESSION,
    "purge": PURGE_SESSION,
}
