"""The actors: decode the message, call a plain function. Retry policy lives here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dramatiq

from service import messages
from service.errors import VtsUnavailable
from workers import sessions
from workers.boot import resources

_TRANSIENT = (VtsUnavailable, sessions.SessionBusy, sessions.SessionNotReady, dramatiq.Retry)
MIN_BACKOFF_MS = 500
MAX_BACKOFF_MS = 15_000


def _retryable(retries: int, exc: BaseException) -> bool:
    """Retry what may pass (VTS unavailable, session busy); never a bug or a rejection."""
    return isinstance(exc, _TRANSIENT) and retries < resources().settings.create_max_retries


def _run(work: Callable[..., None], *args: Any) -> None:
    """Run ``work``; when VTS named a ``Retry-After``, retry after exactly that."""
    try:
        work(resources().sessions, *args)
    except VtsUnavailable as exc:
        if exc.retry_after is None:
            raise
        raise dramatiq.Retry(str(exc), delay=int(exc.retry_after * 1000)) from exc


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
        "the session could not be created at VTS after repeated attempts; try again later",
    )


@dramatiq.actor(
    actor_name=messages.UPDATE_SESSION.actor_name,
    queue_name=messages.UPDATE_SESSION.queue_name,
    retry_when=_retryable,
    min_backoff=MIN_BACKOFF_MS,
    max_backoff=MAX_BACKOFF_MS,
)
def update_session(session_id: str, changes: dict[str, Any]) -> None:
    _run(sessions.update, session_id, changes)


@dramatiq.actor(
    actor_name=messages.EXPIRE_SESSION.actor_name,
    queue_name=messages.EXPIRE_SESSION.queue_name,
    retry_when=_retryable,
    min_backoff=MIN_BACKOFF_MS,
    max_backoff=MAX_BACKOFF_MS,
)
def expire_session(session_id: str) -> None:
    _run(sessions.expire, session_id)
