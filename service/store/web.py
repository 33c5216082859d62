"""The web's view of the store (redis.asyncio): sessions, callbacks, recordings."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import redis.asyncio

from service.batching import GroupCommit
from service.events import Event
from service.messages import Outgoing
from service.models import Session, Status
from service.recordings import Recording
from service.store import scripts
from service.store.codec import (
    CreateOutcome,
    Page,
    by_creation,
    decode_cursor,
    decode_recording,
    decode_session,
    decode_sessions,
    encode_cursor,
    flatten,
    index_member,
    statuses,
    text,
    timeline_entry,
)
from service.store.keys import WEBHOOK_RETENTION_SECONDS, Keys, RecordingKeys


class AsyncStore:
    """The web's view of the store."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client
        self._create = client.register_script(scripts.CREATE)
        self._enqueue_if = client.register_script(scripts.ENQUEUE_IF)
        self._ingest = client.register_script(scripts.INGEST)
        self._group = GroupCommit(client)

    async def ingest_webhook(
        self, event: Event, message: Outgoing, *, nonce: str | None, received_ms: int
    ) -> str:
        """Make a VTS callback durable and queue its processing, in one shared round trip.

        Returns ``accepted``, ``duplicate`` (this event is already stored: nothing done) or
        ``replayed`` (the nonce came with another event before: nothing done).
        """
        fields = {
            "kind": event.kind,
            "params": json.dumps(dict(event.params), separators=(",", ":")),
            "received_ms": str(received_ms),
        }
        result = await self._group.call(
            self._ingest,
            keys=[
                Keys.nonce(nonce) if nonce else "",
                Keys.webhook(event.id),
                Keys.queue(message.queue_name),
                Keys.queue_messages(message.queue_name),
                Keys.webhooks(),
                Keys.webhook_stats(),
                Keys.in_flight(event.session_uuid) if event.kind == "session" else "",
                Keys.arrived(event.session_uuid) if event.kind == "session" else "",
            ],
            args=[
                event.id,
                WEBHOOK_RETENTION_SECONDS,
                received_ms,
                message.redis_message_id,
                message.payload,
                str(event.sequence) if event.kind == "session" and event.sequence else "",
                *flatten(fields),
            ],
        )
        return text(result)

    async def create_session(
        self,
        session: Session,
        message: Outgoing,
        *,
        idempotency: tuple[str, str, str] | None,
        idempotency_ttl: int,
    ) -> CreateOutcome:
        """Store a new session and queue its creation, atomically, in a shared round trip.

        ``idempotency`` is (scope, key, fingerprint of the request). When the key is known,
        nothing is written and the outcome names the existing session.
        """
        scope, key, fingerprint = idempotency or ("", "", "")
        member = index_member(session)
        result = await self._group.call(
            self._create,
            keys=[
                Keys.idempotency(scope, key) if idempotency else "",
                Keys.session(session.id),
                Keys.index(),
                Keys.index(session.status),
                Keys.timeline(session.id),
                Keys.queue(message.queue_name),
                Keys.queue_messages(message.queue_name),
            ],
            args=[
                session.id,
                member,
                message.redis_message_id,
                message.payload,
                timeline_entry("requested", request_id=session.request_id),
                fingerprint,
                idempotency_ttl,
                *flatten(session.to_fields()),
            ],
        )
        return CreateOutcome(text(result[0]), text(result[1]))

    async def get_session(self, session_id: str) -> Session | None:
        return decode_session(await self.client.hgetall(Keys.session(session_id)))

    async def list_sessions(self, *, status: Status | None, limit: int, cursor: str | None) -> Page:
        start = "(" + decode_cursor(cursor) if cursor else "+"
        members = await self.client.zrevrangebylex(
            Keys.index(status), start, "-", start=0, num=limit + 1
        )
        page = [text(m) for m in members[:limit]]
        async with self.client.pipeline(transaction=False) as pipe:
            for member in page:
                pipe.hgetall(Keys.session(member.partition(":")[2]))
            rows = await pipe.execute()
        sessions, skipped = decode_sessions(rows)
        more = len(members) > limit
        return Page(sessions, encode_cursor(page[-1]) if more and page else None, skipped)

    async def enqueue_if_status(
        self, session_id: str, allowed: Sequence[Status], message: Outgoing, entry: str
    ) -> tuple[str, Status | None]:
        """Queue ``message`` if the session's status is one of ``allowed``.

        Returns (``enqueued`` | ``skipped`` | ``missing``, the status it had).
        """
        result, current = await self._group.call(
            self._enqueue_if,
            keys=[
                Keys.session(session_id),
                Keys.timeline(session_id),
                Keys.queue(message.queue_name),
                Keys.queue_messages(message.queue_name),
            ],
            args=[statuses(allowed), entry, message.redis_message_id, message.payload],
        )
        status = text(current)
        return text(result), Status(status) if status else None

    async def timeline(self, session_id: str) -> list[dict[str, Any]]:
        raw = await self.client.lrange(Keys.timeline(session_id), 0, -1)
        return [json.loads(item) for item in raw]

    async def ping(self) -> bool:
        return bool(await self.client.ping())


class AsyncRecordingStore:
    """The web's read-only view of recordings."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client

    async def get(self, rec_id: str) -> Recording | None:
        return decode_recording(await self.client.hgetall(RecordingKeys.recording(rec_id)))

    async def for_session(self, session_id: str) -> list[Recording]:
        """The session's recordings, oldest first."""
        ids = await self.client.smembers(RecordingKeys.session_recordings(session_id))
        async with self.client.pipeline(transaction=False) as pipe:
            for rec_id in sorted(text(i) for i in ids):
                pipe.hgetall(RecordingKeys.recording(rec_id))
            return by_creation(await pipe.execute())
