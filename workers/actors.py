"""The actors: decode the message, call a plain function. Retry policy lives here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dramatiq
import redis
import structlog
from botocore.exceptions import BotoCoreError, ClientError
from dramatiq.middleware import CurrentMessage

from service import messages
from service.errors import VtsUnavailable
from service.phones import mask_text
from workers import accounting as events
from workers import archive as recordings
from workers import leases, notifications, reconcile, retention, sessions
from workers.boot import resources
from workers.downloads import RecordingUnavailable

log = structlog.get_logger(__name__)

MIN_BACKOFF_MS = 500
# How soon an event that must wait (for its session) is tried again.
EVENT_WAIT_MS = 200
DOWNLOAD_RETRIES = 20
# Long enough for a large recording over a slow link; the download has its own timeouts.
DOWNLOAD_TIME_LIMIT_MS = 30 * 60_000
# 1 s doubling to 5 min: about an hour of attempts before an app's receiver is given up on.
NOTIFY_RETRIES = 16
MAX_BACKOFF_MS = 15_000
# Failures that pass by themselves. Redis is our own state: while it is away (a restart,
# a failover) work waits for it however long that takes, and is never given up.
_REDIS = (redis.RedisError,)
_WAITS = (events.EventNotReady,)  # bounded in time by the work itself
_SESSION_WORK = (VtsUnavailable, leases.SessionBusy, sessions.SessionNotReady)


def _cause(exc: BaseException) -> BaseException:
    """What a Retry stands for (we raise Retry from the failure it retries)."""
    return exc.__cause__ if isinstance(exc, dramatiq.Retry) and exc.__cause__ else exc


def _attempt(work: Callable[..., None], *args: Any, transient: tuple[type[Exception], ...]) -> None:
    """Run ``work``; a transient failure becomes a Retry, logged as one warning line
    without a traceback (a retry is not an error). Waits that are part of the work (an
    event for a session still being created) are logged at info."""
    catch: tuple[type[Exception], ...] = (*_REDIS, *_WAITS, *transient)
    try:
        work(*args)
    except catch as exc:
        delay = _delay(exc)
        level = log.info if isinstance(exc, _WAITS) else log.warning
        level("work_retrying", reason=type(exc).__name__, detail=mask_text(str(exc))[:200])
        raise dramatiq.Retry(type(exc).__name__, delay=delay) from exc


def _delay(exc: Exception) -> int | None:
    """Exactly the wait the failure names (Retry-After, an event's wait), else backoff."""
    if isinstance(exc, _WAITS) and not isinstance(exc, recordings.RecordingPending):
        return EVENT_WAIT_MS
    retry_after = getattr(exc, "retry_after", None)
    return int(retry_after * 1000) if retry_after is not None else None


def _retryable(retries: int, exc: BaseException) -> bool:
    """Session work: Redis always; VTS unavailable or the session busy, up to a limit;
    never a bug or a rejection."""
    cause = _cause(exc)
    if isinstance(cause, _REDIS):
        return True
    return isinstance(cause, _SESSION_WORK) and retries < resources().settings.create_max_retries


def _run(work: Callable[..., None], *args: Any) -> None:
    _attempt(work, resources().sessions, *args, transient=_SESSION_WORK)


@dramatiq.actor(
    actor_name=messages.CREATE_SESSION.actor_name,
    queue_name=messages.CREATE_SESSION.queue_name,
    retry_when=_retryable,
    on_retry_exhausted="create_session_exhausted",
    min_backoff=MIN_BACKOFF_MS,
    max_backoff=MAX_BACKOFF_MS,
)
def create_session(session_id: str) -> None:
    message = CurrentMessage.get_current_message()
    replay = bool(message and message.options.get(messages.REPLAY_OPTION))
    _attempt(sessions.create, resources().sessions, session_id, replay, transient=_SESSION_WORK)


def _retryable_redis(retries: int, exc: BaseException) -> bool:
    """Bookkeeping after work is given up: only Redis can fail it, and Redis passes."""
    return isinstance(_cause(exc), _REDIS)


@dramatiq.actor(
    actor_name="create_session_exhausted",
    queue_name=messages.SESSIONS_QUEUE,
    retry_when=_retryable_redis,
    min_backoff=MIN_BACKOFF_MS,
    max_backoff=MAX_BACKOFF_MS,
)
def create_session_exhausted(message: dict[str, Any], retry_info: dict[str, Any]) -> None:
    store, reason = resources().sessions.store, "the session could not be created at VTS"
    args = (store, message["args"][0], sessions.GAVE_UP, f"{reason}; try again later")
    _attempt(sessions.fail, *args, transient=())


def _retryable_event(retries: int, exc: BaseException) -> bool:
    """Events wait as long as apply() says (it bounds the wait); Redis hiccups pass."""
    return isinstance(_cause(exc), _REDIS + _WAITS)


@dramatiq.actor(
    actor_name=messages.APPLY_EVENT.actor_name,
    queue_name=messages.APPLY_EVENT.queue_name,
    retry_when=_retryable_event,
    min_backoff=MIN_BACKOFF_MS,
    max_backoff=MAX_BACKOFF_MS,
)
def apply_event(event_id: str, session_uuid: str | None = None) -> None:
    _attempt(events.apply, resources().events, event_id, session_uuid, transient=())


def _retryable_download(retries: int, exc: BaseException) -> bool:
    """Waiting for the session or for VTS to serve the file is bounded in time by apply();
    Redis always passes; network errors and 5xx up to a limit."""
    cause = _cause(exc)
    if isinstance(cause, _REDIS + _WAITS):
        return True
    return isinstance(cause, RecordingUnavailable) and retries < DOWNLOAD_RETRIES


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
    context = resources().recordings
    _attempt(recordings.apply, context, event_id, transient=(RecordingUnavailable,))


@dramatiq.actor(
    actor_name="recording_download_exhausted",
    queue_name=messages.RECORDINGS_QUEUE,
    retry_when=_retryable_redis,
    min_backoff=1_000,
    max_backoff=60_000,
)
def recording_download_exhausted(message: dict[str, Any], retry_info: dict[str, Any]) -> None:
    _attempt(recordings.give_up, resources().recordings, message["args"][0], transient=())


def _retryable_notification(retries: int, exc: BaseException) -> bool:
    cause = _cause(exc)
    if isinstance(cause, _REDIS):
        return True
    return isinstance(cause, notifications.ReceiverUnavailable) and retries < NOTIFY_RETRIES


@dramatiq.actor(
    actor_name=messages.NOTIFY_APP.actor_name,
    queue_name=messages.NOTIFY_APP.queue_name,
    retry_when=_retryable_notification,
    min_backoff=1_000,
    max_backoff=300_000,
)
def notify_app(session_id: str, kind: str, notification_id: str) -> None:
    # An app's receiver being down is not our failure: a warning, not an error.
    context = resources().notifications
    transient = (notifications.ReceiverUnavailable,)
    _attempt(notifications.send, context, session_id, kind, notification_id, transient=transient)


@dramatiq.actor(
    actor_name="reconcile_session",
    queue_name=messages.SESSIONS_QUEUE,
    retry_when=_retryable,
    min_backoff=MIN_BACKOFF_MS,
    max_backoff=MAX_BACKOFF_MS,
)
def reconcile_session(session_id: str) -> None:
    _run(reconcile.reconcile, session_id)


@dramatiq.actor(
    actor_name="expire_if_due",
    queue_name=messages.SESSIONS_QUEUE,
    retry_when=_retryable,
    min_backoff=MIN_BACKOFF_MS,
    max_backoff=MAX_BACKOFF_MS,
)
def expire_if_due(session_id: str) -> None:
    _run(reconcile.expire_if_due, session_id)


def _retryable_storage(retries: int, exc: BaseException) -> bool:
    """Redis always passes; storage hiccups up to a limit (boto3 has retried within the
    call already)."""
    cause = _cause(exc)
    if isinstance(cause, _REDIS):
        return True
    return isinstance(cause, OSError | BotoCoreError | ClientError) and retries < DOWNLOAD_RETRIES


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


@dramatiq.actor(
    actor_name="update_session_exhausted",
    queue_name=messages.SESSIONS_QUEUE,
    retry_when=_retryable_redis,
    min_backoff=MIN_BACKOFF_MS,
    max_backoff=MAX_BACKOFF_MS,
)
def update_session_exhausted(message: dict[str, Any], retry_info: dict[str, Any]) -> None:
    _attempt(sessions.give_up_update, resources().sessions, message["args"][0], transient=())


@dramatiq.actor(
    actor_name=messages.EXPIRE_SESSION.actor_name,
    queue_name=messages.EXPIRE_SESSION.queue_name,
    retry_when=_retryable,
    min_backoff=MIN_BACKOFF_MS,
    max_backoff=MAX_BACKOFF_MS,
)
def expire_session(session_id: str) -> None:
    _run(sessions.expire, session_id)
