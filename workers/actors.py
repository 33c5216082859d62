"""One actor per job of the contract (:mod:`service.messages`): it decodes the payload and
calls a plain function. Each job's retry policy is its own, declared in the contract."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import dramatiq
import msgspec
import structlog
from dramatiq.middleware import CurrentMessage

from service import messages
from service.messages import (
    EventRef,
    Exhausted,
    Job,
    NotificationRef,
    PingRef,
    SessionRef,
)
from service.phones import mask_text
from workers import accounting, archive, dependencies, notifications, reconcile, retention, sessions
from workers.dependencies import Dependencies

log = structlog.get_logger(__name__)

P = TypeVar("P", bound=msgspec.Struct)


def _cause(exc: BaseException) -> BaseException:
    """What a Retry stands for (we raise Retry from the failure it retries)."""
    return exc.__cause__ if isinstance(exc, dramatiq.Retry) and exc.__cause__ else exc


def declare(job: Job[P], work: Callable[[Dependencies, P], None]) -> dramatiq.Actor[Any, None]:
    """The actor of ``job``: decodes the payload and runs ``work`` on it with the
    dependencies of the broker the actor runs on. A failure the job's policy retries
    becomes a Retry, logged as one warning line without a traceback (a retry is not an
    error); waits that are part of the work are logged at info."""
    policy = job.retry
    retried = policy.retried

    def perform(*args: Any, **kwargs: Any) -> None:
        payload = job.decode(args, kwargs)
        deps = dependencies.of(actor.broker)
        try:
            work(deps, payload)
            # Done only once the work's writes hold on a replica: the message is acked
            # next, and a write lost in a failover under an acked message is never redone.
            # One WAIT per message, not per write: a write lost along with its message's
            # ack is redone when the message comes back from the replica's view.
            deps.replicas.wait()
        except retried as exc:
            level = log.info if isinstance(exc, policy.waits) else log.warning
            level("work_retrying", reason=type(exc).__name__, detail=mask_text(str(exc))[:200])
            raise dramatiq.Retry(type(exc).__name__, delay=messages.delay_ms(exc)) from exc

    def retry_when(retries: int, exc: BaseException) -> bool:
        limit = dependencies.of(actor.broker).max_retries(job)
        return policy.allows(retries, _cause(exc), max_retries=limit)

    perform.__name__ = perform.__qualname__ = job.name
    options: dict[str, Any] = {}
    if job.on_exhausted is not None:
        options["on_retry_exhausted"] = job.on_exhausted.name
    if job.time_limit_ms is not None:
        options["time_limit"] = job.time_limit_ms
    decorate = dramatiq.actor(
        actor_name=job.name,
        queue_name=job.queue,
        retry_when=retry_when,
        max_retries=policy.max_retries,
        min_backoff=policy.min_backoff_ms,
        max_backoff=policy.max_backoff_ms,
        **options,
    )
    actor: dramatiq.Actor[Any, None] = decorate(perform)
    return actor


def create_session(deps: Dependencies, payload: SessionRef) -> None:
    message = CurrentMessage.get_current_message()
    replay = bool(message and message.options.get(messages.REPLAY_OPTION))
    sessions.create(deps, payload.session_id, replay)


def create_session_exhausted(deps: Dependencies, payload: Exhausted) -> None:
    given_up = _given_up(messages.CREATE_SESSION, payload)
    reason = "the session could not be created at VTS; try again later"
    sessions.fail(deps.sessions, given_up.session_id, sessions.GAVE_UP, reason)


def _given_up(job: Job[P], exhausted: Exhausted) -> P:
    """The payload of the message whose retries ran out."""
    return job.decode(exhausted.message.get("args", ()), exhausted.message.get("kwargs", {}))


def update_session(deps: Dependencies, payload: SessionRef) -> None:
    sessions.update(deps, payload.session_id)


def update_session_exhausted(deps: Dependencies, payload: Exhausted) -> None:
    given_up = _given_up(messages.UPDATE_SESSION, payload)
    sessions.give_up_update(deps, given_up.session_id)


def expire_session(deps: Dependencies, payload: SessionRef) -> None:
    sessions.expire(deps, payload.session_id)


def reconcile_session(deps: Dependencies, payload: SessionRef) -> None:
    reconcile.reconcile(deps, payload.session_id)


def expire_if_due(deps: Dependencies, payload: SessionRef) -> None:
    reconcile.expire_if_due(deps, payload.session_id)


def purge_session(deps: Dependencies, payload: SessionRef) -> None:
    retention.purge(deps, payload.session_id)


def apply_event(deps: Dependencies, payload: EventRef) -> None:
    accounting.apply(deps, payload.event_id, payload.session_uuid)


def apply_recording_event(deps: Dependencies, payload: EventRef) -> None:
    # The message names the VTS session as apply_event's does; the stored record has it.
    archive.apply(deps, payload.event_id)


def recording_download_exhausted(deps: Dependencies, payload: Exhausted) -> None:
    given_up = _given_up(messages.APPLY_RECORDING_EVENT, payload)
    archive.give_up(deps, given_up.event_id)


def delete_recording_files(deps: Dependencies, payload: SessionRef) -> None:
    retention.delete_files(deps, payload.session_id)


def notify_app(deps: Dependencies, payload: NotificationRef) -> None:
    notifications.deliver(deps, payload.notification_id)


def ping_endpoint(deps: Dependencies, payload: PingRef) -> None:
    notifications.ping(deps, payload.ping_id, payload.app, payload.url)


declare(messages.CREATE_SESSION, create_session)
declare(messages.CREATE_SESSION_EXHAUSTED, create_session_exhausted)
declare(messages.UPDATE_SESSION, update_session)
declare(messages.UPDATE_SESSION_EXHAUSTED, update_session_exhausted)
declare(messages.EXPIRE_SESSION, expire_session)
declare(messages.RECONCILE_SESSION, reconcile_session)
declare(messages.EXPIRE_IF_DUE, expire_if_due)
declare(messages.PURGE_SESSION, purge_session)
declare(messages.APPLY_EVENT, apply_event)
declare(messages.APPLY_RECORDING_EVENT, apply_recording_event)
declare(messages.RECORDING_DOWNLOAD_EXHAUSTED, recording_download_exhausted)
declare(messages.DELETE_RECORDING_FILES, delete_recording_files)
declare(messages.NOTIFY_APP, notify_app)
declare(messages.PING_ENDPOINT, ping_endpoint)
