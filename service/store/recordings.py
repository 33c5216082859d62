"""Recordings in Redis: one hash per recording, a set per session; the workers' side
(``RecordingStore``) and the web's (``AsyncRecordingStore``), with their scripts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum

import msgspec
import redis
import redis.asyncio

from service.messages import Outgoing
from service.models import iso, now
from service.recordings import (
    Recording,
    recording_format,
    recording_id,
    stored_name,
)
from service.redis_clients import Durability, wait_for_replicas_async
from service.store import lua, scripts
from service.store.codec import decode_str, timeline_entry
from service.store.names import PREFIX
from service.store.queue import QueueKeys
from service.store.sessions import TIMELINE_LIMIT, SessionKeys


class DeleteResult(StrEnum):
    """What deleting a recording did: ``deleted``, ``already`` (deleted before) or
    ``missing``."""

    DELETED = "deleted"
    ALREADY = "already"
    MISSING = "missing"


class RecordingKeys:
    @staticmethod
    def recording(recording_id: str) -> str:
        return f"{PREFIX}recording:{recording_id}"

    @staticmethod
    def session_recordings(session_id: str) -> str:
        return f"{PREFIX}session:{session_id}:recordings"


def decode_recording(raw: Mapping[bytes | str, bytes | str]) -> Recording | None:
    return (
        Recording.from_fields({decode_str(k): decode_str(v) for k, v in raw.items()})
        if raw
        else None
    )


def by_creation(rows: Sequence[Mapping[bytes | str, bytes | str]]) -> list[Recording]:
    recordings = [r for r in map(decode_recording, rows) if r is not None]
    return sorted(recordings, key=lambda r: (r.created_at, r.id))


class RecordingStore:
    """The workers' view of recordings: one hash per recording, a set per session.

    Every write is idempotent: duplicate and redelivered events map to the same record
    (see :func:`service.recordings.recording_id`), and a stored recording stays stored.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._upsert = client.register_script(lua.source("upsert_recording.lua"))
        self._failed = client.register_script(lua.source("mark_recording_failed.lua"))
        self._stored = client.register_script(scripts.RECORDING_STORED)

    def upsert_pending(
        self,
        session_id: str,
        vts_recording_uuid: str,
        fmt: str,
        duration: int | None = None,
    ) -> Recording | None:
        """Record a completed recording to download; return it as it now stands.

        A new or failed recording becomes ``pending``; a ``stored`` one is returned as is
        (the caller has nothing to do). None when the session is gone (purged) or erased. ``fmt`` is
        VTS's RecordingFormat (ValueError if it is neither mp3 nor wav).
        """
        rec_id = recording_id(vts_recording_uuid)
        fields = {
            "id": rec_id,
            "session_id": session_id,
            "vts_recording_uuid": vts_recording_uuid,
            "format": recording_format(fmt),
            "stored_name": stored_name(rec_id, fmt),
            **({"duration": str(duration)} if duration is not None else {}),
        }
        arguments = {"recording_id": rec_id, "now": iso(now()), "fields": fields}
        result = self._upsert(
            keys=[
                RecordingKeys.recording(rec_id),
                RecordingKeys.session_recordings(session_id),
                SessionKeys.session(session_id),
            ],
            args=[msgspec.json.encode(arguments)],
        )
        return None if decode_str(result) == "missing" else self.get(rec_id)

    def mark_stored(self, rec_id: str, *, size: int, sha256: str, content_type: str) -> bool:
        """The file is in storage: mark the recording stored, with its timeline entry and
        the app's notification in the same write (see ``recording_stored.lua``).
        Idempotent. False if the recording is unknown or deleted (its file must go)."""
        owner = self.client.hget(RecordingKeys.recording(rec_id), "session_id")
        if owner is None:
            return False
        session_id = decode_str(owner)
        moment = now()
        arguments = {
            "recording_id": rec_id,
            "session_id": session_id,
            "fields": {"size": str(size), "sha256": sha256, "content_type": content_type},
            "entry": timeline_entry("recording_stored", recording_id=rec_id, size=size),
            "timeline_limit": TIMELINE_LIMIT,
            "now_ms": int(moment.timestamp() * 1000),
            "now": iso(moment),
        }
        result = self._stored(
            keys=[
                RecordingKeys.recording(rec_id),
                SessionKeys.session(session_id),
                SessionKeys.timeline(session_id),
            ],
            args=[msgspec.json.encode(arguments)],
        )
        return decode_str(result) != "missing"

    def mark_failed(self, rec_id: str, error: str) -> bool:
        """Downloading gave up (``error`` is shown to apps: no secrets, no URLs).

        False, and nothing changed, if the recording is unknown or already stored.
        """
        result = self._failed(
            keys=[RecordingKeys.recording(rec_id)], args=[iso(now()) or "", error]
        )
        return decode_str(result) == "ok"

    def get(self, rec_id: str) -> Recording | None:
        return decode_recording(self.client.hgetall(RecordingKeys.recording(rec_id)))

    def for_session(self, session_id: str) -> list[Recording]:
        """The session's recordings, oldest first."""
        ids = self.client.smembers(RecordingKeys.session_recordings(session_id))
        with self.client.pipeline(transaction=False) as pipe:
            for rec_id in sorted(decode_str(i) for i in ids):
                pipe.hgetall(RecordingKeys.recording(rec_id))
            return by_creation(pipe.execute())


class AsyncRecordingStore:
    """The web's read-only view of recordings."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        durability: Durability = Durability(),  # noqa: B008  (frozen: shared safely)
    ) -> None:
        self.client = client
        self.durability = durability
        self._delete = client.register_script(lua.source("delete_recording.lua"))

    async def delete(self, recording: Recording, message: Outgoing, entry: str) -> DeleteResult:
        """Mark the recording deleted and queue its file's deletion, atomically (see
        ``delete_recording.lua``)."""
        arguments = {
            "now": iso(now()),
            "entry": entry,
            "message_id": message.redis_message_id,
            "payload": message.payload.decode(),
        }
        result = await self._delete(
            keys=[
                RecordingKeys.recording(recording.id),
                SessionKeys.timeline(recording.session_id),
                QueueKeys.queue(message.queue_name),
                QueueKeys.queue_messages(message.queue_name),
            ],
            args=[msgspec.json.encode(arguments)],
        )
        await wait_for_replicas_async(self.client, self.durability)
        return DeleteResult(decode_str(result))

    async def get(self, rec_id: str) -> Recording | None:
        return decode_recording(await self.client.hgetall(RecordingKeys.recording(rec_id)))

    async def for_session(self, session_id: str) -> list[Recording]:
        """The session's recordings, oldest first."""
        ids = await self.client.smembers(RecordingKeys.session_recordings(session_id))
        async with self.client.pipeline(transaction=False) as pipe:
            for rec_id in sorted(decode_str(i) for i in ids):
                pipe.hgetall(RecordingKeys.recording(rec_id))
            return by_creation(await pipe.execute())

    async def for_sessions(self, session_ids: Sequence[str]) -> dict[str, list[Recording]]:
        """Each session's recordings, oldest first, in two round trips (for a page)."""
        if not session_ids:
            return {}
        async with self.client.pipeline(transaction=False) as pipe:
            for session_id in session_ids:
                pipe.smembers(RecordingKeys.session_recordings(session_id))
            id_sets = await pipe.execute()
        wanted = [sorted(decode_str(i) for i in ids) for ids in id_sets]
        if not any(wanted):
            return {session_id: [] for session_id in session_ids}
        async with self.client.pipeline(transaction=False) as pipe:
            for rec_id in (rec_id for ids in wanted for rec_id in ids):
                pipe.hgetall(RecordingKeys.recording(rec_id))
            rows = iter(await pipe.execute())
        return {
            session_id: by_creation([next(rows) for _ in ids])
            for session_id, ids in zip(session_ids, wanted, strict=True)
        }
