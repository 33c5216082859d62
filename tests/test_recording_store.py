"""Recordings in Redis: one record per VTS recording, whatever the deliveries."""

from __future__ import annotations

import asyncio

import pytest
import redis
import redis.asyncio

from service.recordings import Recording, RecordingStatus, recording_id, stored_name
from service.store import AsyncRecordingStore, RecordingStore
from service.store.keys import Keys, RecordingKeys
from tests.conftest import stored_session

UUID = "c0ffee00-0000-4000-8000-000000000001"


@pytest.fixture
def store(redis_url: str, redis_client: redis.Redis) -> RecordingStore:
    for session_id in ("ses_1", "ses_2"):
        stored_session(redis_url, session_id)
    return RecordingStore(redis_client)


def _pending(
    store: RecordingStore, session_id: str, uuid: str, fmt: str, duration: int | None = None
) -> Recording:
    recording = store.upsert_pending(session_id, uuid, fmt, duration)
    assert recording is not None
    return recording


def test_ids_are_derived_from_the_vts_uuid() -> None:
    """The same RecordingUUID always maps to the same valid storage name."""
    assert recording_id(UUID) == recording_id(UUID) != recording_id(UUID + "x")
    assert stored_name(recording_id(UUID), ".WAV") == recording_id(UUID) + ".wav"


def test_duplicate_events_make_one_record(store: RecordingStore, redis_client: redis.Redis) -> None:
    """Upserting twice keeps one pending record, listed once under its session."""
    first = _pending(store, "ses_1", UUID, "mp3", 12)
    second = _pending(store, "ses_1", UUID, ".mp3", 12)
    assert first.id == second.id == recording_id(UUID)
    assert second.status is RecordingStatus.PENDING
    assert second.created_at == first.created_at
    assert (second.duration, second.stored_name) == (12, f"{first.id}.mp3")
    assert redis_client.smembers(RecordingKeys.session_recordings("ses_1")) == {first.id.encode()}


def test_stored_stays_stored(store: RecordingStore) -> None:
    """Once stored, a recording is neither failed nor reset to pending."""
    rec = _pending(store, "ses_1", UUID, "wav")
    assert store.mark_stored(rec.id, size=10, sha256="ab" * 32, content_type="audio/wav")
    assert not store.mark_failed(rec.id, "gave up")
    again = _pending(store, "ses_1", UUID, "wav")
    assert again.status is RecordingStatus.STORED
    assert (again.size, again.sha256, again.error) == (10, "ab" * 32, None)


def test_failed_goes_back_to_pending(store: RecordingStore) -> None:
    """A failed recording is retried when its event comes again; the error is cleared."""
    rec = _pending(store, "ses_1", UUID, "wav")
    assert store.mark_failed(rec.id, "the recording host answered 403")
    failed = store.get(rec.id)
    assert failed is not None
    assert (failed.status, failed.error) == (
        RecordingStatus.FAILED,
        "the recording host answered 403",
    )
    again = _pending(store, "ses_1", UUID, "wav")
    assert (again.status, again.error) == (RecordingStatus.PENDING, None)


def test_a_purged_or_erased_session_gets_no_recording(
    store: RecordingStore, redis_client: redis.Redis
) -> None:
    """A recording event for a session that is gone, or erased, writes nothing."""
    assert store.upsert_pending("ses_gone", UUID, "wav") is None
    assert store.for_session("ses_gone") == []
    redis_client.hset(Keys.session("ses_2"), "erased_at", "2026-12-01T00:00:00.000+00:00")
    assert store.upsert_pending("ses_2", UUID, "wav") is None
    assert store.get(recording_id(UUID)) is None
    assert store.for_session("ses_2") == []


def test_storing_writes_its_timeline_entry_and_notification_once(
    store: RecordingStore, redis_client: redis.Redis
) -> None:
    """Marked stored twice (a redelivered job): one timeline entry, one notification
    recorded with its first attempt due; a deleted recording is never marked stored."""
    redis_client.hset(Keys.session("ses_1"), "callback_url", "https://app.example/hooks")
    rec = _pending(store, "ses_1", UUID, "wav")
    for _ in range(2):
        assert store.mark_stored(rec.id, size=10, sha256="ab" * 32, content_type="audio/wav")
    entries = [e for e in redis_client.lrange(Keys.timeline("ses_1"), 0, -1) if b"stored" in e]
    assert len(entries) == 1
    notification = f"ses_1.session.recording_stored.{rec.id}"
    assert redis_client.zrange(Keys.session_notifications("ses_1"), 0, -1) == [
        notification.encode()
    ]
    assert redis_client.zscore(Keys.schedule(), f"notify:{notification}") is not None
    other = _pending(store, "ses_1", "c0ffee00-0000-4000-8000-000000000002", "wav")
    redis_client.hset(RecordingKeys.recording(other.id), "status", "deleted")
    assert not store.mark_stored(other.id, size=1, sha256="0" * 64, content_type="audio/wav")


def test_unknown_recordings(store: RecordingStore) -> None:
    """Marks on an unknown id change nothing."""
    assert not store.mark_stored("rec_x", size=1, sha256="0" * 64, content_type="audio/wav")
    assert not store.mark_failed("rec_x", "no")
    assert store.get("rec_x") is None
    assert store.for_session("ses_none") == []


def test_session_recordings_oldest_first(store: RecordingStore, redis_url: str) -> None:
    """for_session lists a session's recordings by creation (then id), from both views."""
    for n in range(3):
        _pending(store, "ses_1", f"{UUID}-{n}", "mp3")
    _pending(store, "ses_2", UUID, "mp3")
    listed = store.for_session("ses_1")
    ids = [r.id for r in listed]
    assert set(ids) == {recording_id(f"{UUID}-{n}") for n in range(3)}
    assert [(r.created_at, r.id) for r in listed] == sorted((r.created_at, r.id) for r in listed)

    async def read() -> list[str]:
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            return [r.id for r in await AsyncRecordingStore(client).for_session("ses_1")]
        finally:
            await client.aclose()

    assert asyncio.run(read()) == ids
