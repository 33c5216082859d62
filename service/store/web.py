"""The web's view of the store (redis.asyncio): sessions, callbacks, recordings."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import redis.asyncio

from service.apps import Budget
from service.messages import Outgoing
from service.models import Session, Status
from service.store import scripts
from service.store.apps import AppKeys
from service.store.batching import GroupCommit
from service.store.codec import (
    CreateOutcome,
    Page,
    app_range,
    decode_cursor,
    decode_session,
    decode_sessions,
    decode_str,
    encode_cursor,
    hash_args,
    index_member,
    member_session_id,
    statuses,
    timeline_entry,
)
from service.store.events import AsyncStoredEvents, EventKeys
from service.store.queue import QueueKeys
from service.store.recordings import RecordingKeys
from service.store.schedule import ScheduleKeys
from service.store.sessions import CHANNEL, PENDING_UPDATE_TTL, TIMELINE_LIMIT, SessionKeys

# For sessions stored by the service itself (tests, tools) rather than by an app.
UNLIMITED = Budget(limit=2**31, window=1.0)


def _budget_args(budget: Budget) -> list[int]:
    return [budget.limit, round(budget.window * 1000)]


def _throttled_or(result: Any) -> tuple[str, str]:
    return decode_str(result[0]), decode_str(result[1])


_COMPACT = json.JSONEncoder(separators=(",", ":"), sort_keys=True)


class AsyncStore(AsyncStoredEvents):
    """The web's view of the store: sessions here, callbacks from the events module."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client
        self._create = client.register_script(scripts.CREATE)
        self._enqueue_if = client.register_script(scripts.ENQUEUE_IF)
        self._request_update = client.register_script(scripts.REQUEST_UPDATE)
        self._erase = client.register_script(scripts.ERASE)
        self._group = GroupCommit(client)
        self._init_events()

    async def create_session(
        self,
        session: Session,
        message: Outgoing,
        *,
        idempotency: tuple[str, str, str] | None,
        idempotency_ttl: int,
        budget: Budget = UNLIMITED,
    ) -> CreateOutcome:
        """Store a new session and queue its creation, atomically, in a shared round trip.

        ``idempotency`` is (scope, key, fingerprint of the request). When the key is known,
        nothing is written and the outcome names the existing session. When the session's
        app has spent its ``budget``, nothing is written and the outcome is ``throttled``.
        """
        scope, key, fingerprint = idempotency or ("", "", "")
        member = index_member(session)
        result = await self._group.call(
            self._create,
            keys=[
                SessionKeys.idempotency(scope, key) if idempotency else "",
                SessionKeys.session(session.id),
                SessionKeys.index(),
                SessionKeys.index(session.status),
                SessionKeys.timeline(session.id),
                QueueKeys.queue(message.queue_name),
                QueueKeys.queue_messages(message.queue_name),
                AppKeys.budget(session.app or ""),
            ],
            args=[
                session.id,
                member,
                message.redis_message_id,
                message.payload,
                timeline_entry("requested", request_id=session.request_id, app=session.app),
                fingerprint,
                idempotency_ttl,
                *_budget_args(budget),
                *hash_args(session.to_fields()),
            ],
        )
        outcome, detail = _throttled_or(result)
        if outcome == "throttled":
            return CreateOutcome(outcome, "", retry_after_ms=int(detail))
        return CreateOutcome(outcome, detail)

    async def get_session(self, session_id: str) -> Session | None:
        return decode_session(await self.client.hgetall(SessionKeys.session(session_id)))

    async def list_sessions(
        self, app: str, *, status: Status | None, limit: int, cursor: str | None
    ) -> Page:
        """``app``'s sessions, newest first; raises InvalidCursor for a cursor not of its."""
        lowest, highest = app_range(app)
        start = "(" + decode_cursor(cursor, app) if cursor else highest
        members = await self.client.zrevrangebylex(
            SessionKeys.index(status), start, lowest, start=0, num=limit + 1
        )
        page = [decode_str(m) for m in members[:limit]]
        async with self.client.pipeline(transaction=False) as pipe:
            for member in page:
                pipe.hgetall(SessionKeys.session(member_session_id(member)))
            rows = await pipe.execute()
        sessions, skipped = decode_sessions(rows)
        more = len(members) > limit
        return Page(sessions, encode_cursor(page[-1]) if more and page else None, skipped)

    async def enqueue_if_status(
        self,
        session_id: str,
        allowed: Sequence[Status],
        message: Outgoing,
        entry: str,
        *,
        app: str,
        budget: Budget,
    ) -> tuple[str, str]:
        """Queue ``message`` if the session is ``app``'s and its status is one of ``allowed``,
        spending one of the app's ``budget``.

        Returns (``enqueued`` | ``skipped`` | ``missing``, the status it had) or
        (``throttled``, milliseconds until the budget has room).
        """
        result = await self._group.call(
            self._enqueue_if,
            keys=[
                SessionKeys.session(session_id),
                SessionKeys.timeline(session_id),
                QueueKeys.queue(message.queue_name),
                QueueKeys.queue_messages(message.queue_name),
                AppKeys.budget(app),
            ],
            args=[
                statuses(allowed),
                entry,
                message.redis_message_id,
                message.payload,
                app,
                *_budget_args(budget),
            ],
        )
        return _throttled_or(result)

    async def request_update(
        self,
        session_id: str,
        changes: dict[str, Any],
        message: Outgoing,
        entry: str,
        *,
        app: str,
        allowed: Sequence[Status],
        budget: Budget,
    ) -> tuple[str, str]:
        """Ask for ``changes`` to ``app``'s session, merged with any not yet sent to VTS.

        Returns (``merged`` | ``enqueued`` | ``scheduled`` | ``skipped`` | ``missing``, the
        status it had) or (``throttled``, milliseconds until the budget has room).
        """
        fields = {name: _COMPACT.encode(value) for name, value in changes.items()}
        result = await self._group.call(
            self._request_update,
            keys=[
                SessionKeys.session(session_id),
                SessionKeys.timeline(session_id),
                SessionKeys.pending_update(session_id),
                SessionKeys.update_sent(session_id),
                QueueKeys.queue(message.queue_name),
                QueueKeys.queue_messages(message.queue_name),
                ScheduleKeys.schedule(),
                AppKeys.budget(app),
            ],
            args=[
                app,
                statuses(allowed),
                entry,
                message.redis_message_id,
                message.payload,
                *_budget_args(budget),
                PENDING_UPDATE_TTL,
                TIMELINE_LIMIT,
                f"update:{session_id}",
                *hash_args(fields),
            ],
        )
        return _throttled_or(result)

    async def owner(self, session_id: str) -> str | None:
        """The app the session belongs to (None when there is no such session)."""
        found = await self.client.hget(SessionKeys.session(session_id), "app")
        return decode_str(found) if found else None

    async def erase_session(
        self, session: Session, message: Outgoing, *, masked: tuple[str, str], at: str, entry: str
    ) -> tuple[str, Status | None]:
        """Erase an ended session's personal data and queue its files' deletion, atomically.

        The parties become ``masked``, metadata and the idempotency record go, recordings
        become ``deleted``, stored callbacks go; counters and the timeline stay (``entry``
        is added). Returns (``erased`` | ``already`` | ``live`` | ``missing``, status).
        """
        uuid = session.vts_session_uuid
        result, current = await self._erase(
            keys=[
                SessionKeys.session(session.id),
                SessionKeys.timeline(session.id),
                RecordingKeys.session_recordings(session.id),
                QueueKeys.queue(message.queue_name),
                QueueKeys.queue_messages(message.queue_name),
                EventKeys.webhooks(),
                EventKeys.callbacks(uuid) if uuid else "",
            ],
            args=[
                *masked,
                at,
                entry,
                CHANNEL,
                session.id,
                message.redis_message_id,
                message.payload,
                RecordingKeys.recording(""),
                EventKeys.webhook(""),
            ],
        )
        status = decode_str(current)
        return decode_str(result), Status(status) if status else None

    async def timeline(self, session_id: str) -> list[dict[str, Any]]:
        raw = await self.client.lrange(SessionKeys.timeline(session_id), 0, -1)
        return [json.loads(item) for item in raw]

    async def ping(self) -> bool:
        return bool(await self.client.ping())
