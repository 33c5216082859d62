"""Recordings in Redis: one hash per recording, a set per session (workers' side)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import redis

from service.models import iso, now
from service.recordings import (
    Recording,
    RecordingStatus,
    recording_format,
    recording_id,
    stored_name,
)
from service.store import scripts
from service.store.codec import by_creation, decode_recording, decode_str, hash_args
from service.store.names import PREFIX
from service.store.sessions import SessionKeys


class RecordingKeys:
    @staticmethod
    def recording(recording_id: str) -> str:
        return f"{PREFIX}recording:{recording_id}"

    @staticmethod
    def session_recordings(session_id: str) -> str:
        return f"{PREFIX}session:{session_id}:recordings"


class RecordingStore:
    """The workers' view of recordings: one hash per recording, a set per session.

    Every write is idempotent: duplicate and redelivered events map to the same record
    (see :func:`service.recordings.recording_id`), and a stored recording stays stored.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._upsert = client.register_script(scripts.UPSERT_RECORDING)
        self._mark = client.register_script(scripts.MARK_RECORDING)

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
        result = self._upsert(
            keys=[
                RecordingKeys.recording(rec_id),
                RecordingKeys.session_recordings(session_id),
                SessionKeys.session(session_id),
            ],
            args=[rec_id, iso(now()) or "", *hash_args(fields)],
        )
        return None if decode_str(result) == "missing" else self.get(rec_id)

    def mark_stored(self, rec_id: str, *, size: int, sha256: str, content_type: str) -> bool:
        """The file is in storage; False if the recording is unknown. Idempotent."""
        fields = {"size": str(size), "sha256": sha256, "content_type": content_type}
        return self._set_status(
            rec_id, RecordingStatus.STORED, ("pending", "failed", "stored"), fields
        )

    def mark_failed(self, rec_id: str, error: str) -> bool:
        """Downloading gave up (``error`` is shown to apps: no secrets, no URLs).

        False, and nothing changed, if the recording is unknown or already stored.
        """
        return self._set_status(
            rec_id, RecordingStatus.FAILED, ("pending", "failed"), {"error": error}
        )

    def _set_status(
        self, rec_id: str, to: RecordingStatus, allowed: Sequence[str], fields: Mapping[str, str]
    ) -> bool:
        result = self._mark(
            keys=[RecordingKeys.recording(rec_id)],
            args=[" ".join(allowed), to.value, iso(now()) or "", *hash_args(fields)],
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
