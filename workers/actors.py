"""The actors: decode the message, call a plain function. Retry policy lives here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dramatiq
import redis
import structlog
from botocore.exceptions import BotoCoreError, ClientError

from service import messages
from service.downloads import RecordingUnavailable
from service.errors import VtsUnavailable
from workers import events, notifications, reconcile, recordings, retention, sessions
from workers.boot import resources

log = structlog.get_logger(__name__)

_TRANSIENT = (VtsUnavailable, sessions.SessionBusy, sessions.SessionNotReady, dramatiq.Retry)
MIN_BACKOFF_MS = 500
# How soon an event that must wait (for its session, or the event before it) is tried again.
EVENT_WAIT_MS = 200
DOWNLOAD_RETRIES = 20
# Long enough for a large recording over a slow link; the download has its own timeouts.
DOWNLOAD_TIME_LIMIT_MS = 30 * 60_000
# 1 s doubling to 5 min: about an hour of attempts before an app's receiver is given up on.
NOTIFY_RETRIES = 16
MAX_BACKOFF_MS = 15_000


def _retryable(retries: int, exc: BaseException) -> bool:
    """Retry what may pass (VTS unavailable, session busy); never a bug or a rejection."""
    return isinstance(exc, _TRANSIENT) and retries < resources().settings.create_max_retries


def _run(work: Callable[..., None], *args: Any) -> None:
    """Run ``work``; what may pass is retried as a ``Retry`` (after VTS's ``Retry-After``
    when it named one), which dramatiq logs as a retry, not as an error with a traceback:
    a busy session or a VTS hiccup is expected, not a failure."""
    try:
        work(resources().sessions, *args)
    except VtsUnavailable as exc:
        log.warning("vts_unavailable", status=exc.status, error=str(exc))
        delay = None if exc.retry_after is None else int(exc.retry_after * 1000)
        raise dramatiq.Retry(str(exc), delay=delay) from exc
    except (sessions.SessionBusy, sessions.SessionNotReady) as exc:
        raise dramatiq.Retry(str(exc)) from exc


@dramatiq.actor(
    actor_name=messages.CREATE_SESSION.actor_name,
    queue_name=messages.CREATE_SESSION.queue_name,
    retry_when=_retryable,
    on_retry_exhausted="create_session_exhausted",
    min_backoff=MIN_BACKOFF_MS,
    max_backoff=MAX_BACKOFF_MS,
)
def create_session(session_id: str) -> None:
    _run(sessions.create, session_id)


@dramatiq.actor(actor_name="create_session_exhausted", queue_name=messages.SESSIONS_QUEUE)
def create_session_exhausted(message: dict[str, Any], retry_info: dict[str, Any]) -> None:
    session_id = message["args"][0]
    sessions.fail(
        resources().sessions.store,
        session_id,
        "create_failed",
        "the session could not be created at VTS; try again later",
    )


def _retryable_event(retries: int, exc: BaseException) -> bool:
    """Events wait as long as apply() says (it bounds the wait); Redis hiccups pass."""
    return isinstance(exc, dramatiq.Retry | redis.RedisError) and retries < 10_000


@dramatiq.actor(
    actor_name=messages.APPLY_EVENT.actor_name,
    queue_name=messages.APPLY_EVENT.queue_name,
    retry_when=_retryable_event,
    min_backoff=MIN_BACKOFF_MS,
    max_backoff=MAX_BACKOFF_MS,
)
def apply_event(event_id: str, session_uuid: str | None = None) -> None:
    try:
        events.apply(resources().events, event_id, session_uuid)
    except events.EventNotReady as exc:
        raise dramatiq.Retry(str(exc), delay=EVENT_WAIT_MS) from exc


def _retryable_download(retries: int, exc: BaseException) -> bool:
    """404s (bounded in time by apply()), network errors and 5xx, up to a limit."""
    transient = dramatiq.Retry | RecordingUnavailable | redis.RedisError
    return isinstance(exc, transient) and retries < DOWNLOAD_RETRIES


@dramatiq.actor(
    actor_name=messages.APPLY_RECORDING_EVENT.actor_name,
    queue_name=messages.APPLY_RECORDING_EVENT.queue_name,
    retry_when=_retryable_download,
    on_retry_exhausted="recording_download_exhausted",
    min_backoff=1_000,
    max_backoff=60_000,
    time_limit=DOWNLOAD_TIME_LIMIT_MS,
)
def apply_recording_event(event_id: str, _session_uuid: str | None = None) -> None:
    # The message names the VTS session as apply_event's does; the stored record has it.
    try:
        recordings.apply(resources().recordings, event_id)
    except recordings.RecordingPending as exc:
        raise dramatiq.Retry(str(exc)) from exc
    except events.EventNotReady as exc:
        raise dramatiq.Retry(str(exc), delay=EVENT_WAIT_MS) from exc


@dramatiq.actor(actor_name="recording_download_exhausted", queue_name=messages.RECORDINGS_QUEUE)
def recording_download_exhausted(message: dict[str, Any], retry_info: dict[str, Any]) -> None:
    recordings.give_up(resources().recordings, message["args"][0])


def _retryable_notification(retries: int, exc: BaseException) -> bool:
    return isinstance(exc, dramatiq.Retry) and retries < NOTIFY_RETRIES


@dramatiq.actor(
    actor_name=messages.NOTIFY_APP.actor_name,
    queue_name=messages.NOTIFY_APP.queue_name,
    retry_when=_retryable_notification,
    min_backoff=1_000,
    max_backoff=300_000,
)
def notify_app(session_id: str, kind: str, notification_id: str) -> None:
    try:
        notifications.send(resources().notifications, session_id, kind, notification_id)
    except notifications.ReceiverUnavailable as exc:
        # A Retry is logged as a retry, not as an error with a traceback: an app's
        # receiver being down is not our failure.
        raise dramatiq.Retry(str(exc)) from exc


@dramatiq.actor(
    actor_name="reconcile_session",
    queue_name=messages.SESSIONS_QUEUE,
    retry_when=_retryable,
    min_backoff=MIN_BACKOFF_MS,
    max_backoff=MAX_BACKOFF_MS,
)
def reconcile_session(session_id: str) -> None:
    _run(reconcile.reconcile, session_id)


@dramatiq.actor(actor_name="expire_if_due", queue_name=messages.SESSIONS_QUEUE)
def expire_if_due(session_id: str) -> None:
    reconcile.expire_if_due(resources().sessions, session_id)


def _retryable_storage(retries: int, exc: BaseException) -> bool:
    """Redis and storage hiccups pass (boto3 has retried within the call already)."""
    return isinstance(exc, redis.RedisError | OSError | BotoCoreError | ClientError) and (
        retries < DOWNLOAD_RETRIES
    )


@dramatiq.actor(
    actor_name="purge_session",
    queue_name=messages.SESSIONS_QUEUE,
    retry_when=_retryable_storage,
    min_backoff=1_000,
    max_backoff=60_000,
)
def purge_session(session_id: str) -> None:
    retention.purge(resources().retention, session_id)


@dramatiq.actor(
    actor_name=messages.DELETE_RECORDING_FILES.actor_name,
    queue_name=messages.DELETE_RECORDING_FILES.queue_name,
    retry_when=_retryable_storage,
    min_backoff=1_000,
    max_backoff=60_000,
)
def delete_recording_files(session_id: str) -> None:
    retention.delete_files(resources().retention, session_id)


@dramatiq.actor(
    actor_name=messages.UPDATE_SESSION.actor_name,
    queue_name=messages.UPDATE_SESSION.queue_name,
    retry_when=_retryable,
    on_retry_exhausted="update_session_exhausted",
    min_backoff=MIN_BACKOFF_MS,
    max_backoff=MAX_BACKOFF_MS,
)
def update_session(session_id: str, changes: dict[str, Any] | None = None) -> None:
    _run(sessions.update, session_id, changes)


@dramatiq.actor(actor_name="update_session_exhausted", queue_name=messages.SESSIONS_QUEUE)
def update_session_exhausted(message: dict[str, Any], retry_info: dict[str, Any]) -> None:
    sessions.give_up_update(resources().sessions, message["args"][0])


@dramatiq.actor(
    actor_name=messages.EXPIRE_SESSION.actor_name,
    queue_name=messages.EXPIRE_SESSION.queue_name,
    retry_when=_retryable,
    min_backoff=MIN_BACKOFF_MS,
    max_backoff=MAX_BACKOFF_MS,
)
def expire_session(session_id: str) -> None:
    _run(sessions.expire, session_id)
