"""A recording event that reaches us before its session's create has finished waits for
the session, as session events do; it is never given up for arriving early."""

from __future__ import annotations

import json
import time

import dramatiq
import pytest
import redis

from service import messages
from service.models import Status
from service.recordings import recording_id
from service.store import Queue, RecordingStore, Sessions
from service.store.keys import Keys
from service.vts.callbacks import check
from tests.conftest import event_id, stored_session, wait_until


def test_a_recording_event_waits_past_the_download_retries_for_its_session(
    redis_url: str,
    redis_client: redis.Redis,
    worker: dramatiq.Worker,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The event is retried more often than a download may be, then its session appears
    and the recording is registered; nothing is dead-lettered."""
    vts_uuid, recording_uuid = "early-recording-1", "c0ffee00-1111-4222-8333-444455556666"
    params = {
        "EventName": "SessionRecordingCompleted", "SessionUUID": vts_uuid,
        "RecordingUUID": recording_uuid, "RecordingFormat": "mp3",
        "RecordingURL": "https://recordings.invalid/a.mp3", "SequenceNumber": "1",
    }  # fmt: skip
    event = check("recording", params)
    received_ms = str(int(time.time() * 1000))
    fields = {"kind": "recording", "params": json.dumps(params), "received_ms": received_ms}
    stored_as = event_id(event)
    redis_client.hset(Keys.webhook(stored_as), mapping=fields)  # type: ignore[arg-type]
    Queue(redis_client).enqueue(
        messages.APPLY_RECORDING_EVENT.message(messages.EventRef(stored_as))
    )
    waits: list[str] = []
    download_retries = messages.APPLY_RECORDING_EVENT.retry.max_retries

    def waited_enough() -> bool:
        waits.extend(
            line for line in capsys.readouterr().err.splitlines() if "work_retrying" in line
        )
        return len(waits) > 1 + download_retries  # more attempts than a download gets

    wait_until(waited_enough, timeout=60)
    session = stored_session(redis_url, "ses_" + "e" * 32)
    sessions = Sessions(redis_client)
    sessions.claim_vts_session(vts_uuid, session.id)
    sessions.transition(session.id, Status.ACTIVE, allowed=[Status.PENDING])
    recordings = RecordingStore(redis_client)
    wait_until(lambda: recordings.get(recording_id(recording_uuid)), timeout=30)
    assert redis_client.zcard(Keys.dead_letters(messages.RECORDINGS_QUEUE)) == 0
