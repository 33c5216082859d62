"""The web's session and recording scripts, branch by branch, on real Redis: the outcomes
the API answers before they could happen (a change to an ended or another app's session,
a recording deleted twice) are reached through the stores."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime

import redis
import redis.asyncio

from service import messages
from service.apps import Budget
from service.messages import SessionRef
from service.models import LIVE, Session, Status
from service.recordings import RecordingStatus
from service.store import (
    AsyncRecordingStore,
    AsyncSessions,
    DeleteResult,
    EnqueueResult,
    RecordingStore,
    Sessions,
    UpdateResult,
    timeline_entry,
)
from service.store.keys import Keys

APP = "rides"
BUDGET = Budget(limit=100, window=1.0)
ALLOWED = [Status.PENDING, *LIVE]


def _store_session(redis_url: str, session_id: str) -> None:
    moment = datetime.now(UTC)
    session = Session(
        id=session_id,
        status=Status.PENDING,
        first_party="+14155552671",
        second_party="+14155552672",
        created_at=moment,
        updated_at=moment,
        app=APP,
    )
    message = messages.CREATE_SESSION.message(SessionRef(session_id))

    async def go() -> None:
        client = redis.asyncio.Redis.from_url(redis_url)
        await AsyncSessions(client).create_session(
            session, message, idempotency=None, idempotency_ttl=60
        )
        await client.aclose()

    asyncio.run(go())


Changed = tuple[tuple[EnqueueResult, str], tuple[UpdateResult, str]]


def _change(redis_url: str, session_id: str, app: str) -> Changed:
    """Ask to end the session, then to change it, as ``app``: the two outcomes, each with
    the status the session had."""

    async def go() -> Changed:
        client = redis.asyncio.Redis.from_url(redis_url)
        sessions = AsyncSessions(client)
        end = messages.EXPIRE_SESSION.message(SessionRef(session_id), app=app)
        ended = await sessions.enqueue_if_status(
            session_id, ALLOWED, end, timeline_entry("end_requested"), app=app, budget=BUDGET
        )
        update = messages.UPDATE_SESSION.message(SessionRef(session_id), app=app)
        changed = await sessions.request_update(
            session_id,
            {"record": True},
            update,
            timeline_entry("update_requested"),
            app=app,
            allowed=ALLOWED,
            budget=BUDGET,
        )
        await client.aclose()
        return ended, changed

    return asyncio.run(go())


def test_an_ended_session_is_skipped_and_nothing_is_queued(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Ending or changing an ended session is skipped: no message, no pending update, no
    timeline entry, no budget spent."""
    session_id = "ses_" + "1" * 32
    _store_session(redis_url, session_id)
    Sessions(redis_client).transition(session_id, Status.EXPIRED, allowed=[Status.PENDING])
    queued = redis_client.llen(Keys.queue(messages.SESSIONS_QUEUE))
    entries = redis_client.llen(Keys.timeline(session_id))

    assert _change(redis_url, session_id, APP) == (
        (EnqueueResult.SKIPPED, "expired"),
        (UpdateResult.SKIPPED, "expired"),
    )
    assert redis_client.llen(Keys.queue(messages.SESSIONS_QUEUE)) == queued
    assert redis_client.llen(Keys.timeline(session_id)) == entries
    assert not redis_client.exists(Keys.pending_update(session_id))
    assert redis_client.zcard(Keys.budget(APP)) == 1  # the create's


def test_another_apps_session_is_missing(redis_url: str, redis_client: redis.Redis) -> None:
    """Another app's session is missing to both scripts, and is left as it was."""
    session_id = "ses_" + "2" * 32
    _store_session(redis_url, session_id)
    before = redis_client.hgetall(Keys.session(session_id))

    assert _change(redis_url, session_id, "food") == (
        (EnqueueResult.MISSING, ""),
        (UpdateResult.MISSING, ""),
    )
    assert redis_client.hgetall(Keys.session(session_id)) == before
    assert not redis_client.exists(Keys.pending_update(session_id))
    assert not redis_client.exists(Keys.budget("food"))


def test_a_recording_is_deleted_once(redis_url: str, redis_client: redis.Redis) -> None:
    """Deleting a recording queues its file's deletion; deleting it again is ``already``
    and queues nothing more; an unknown one is ``missing``."""
    session_id = "ses_" + "3" * 32
    _store_session(redis_url, session_id)
    recording = RecordingStore(redis_client).upsert_pending(session_id, "rec-uuid-1", "mp3")
    assert recording is not None
    unknown = replace(recording, id="rec_" + "9" * 32)
    queue = Keys.queue(messages.RECORDINGS_QUEUE)

    async def go() -> list[DeleteResult]:
        client = redis.asyncio.Redis.from_url(redis_url)
        store = AsyncRecordingStore(client)
        outcomes = []
        for target in (recording, recording, unknown):
            message = messages.DELETE_RECORDING_FILES.message(SessionRef(session_id))
            entry = timeline_entry("recording_deleted", recording_id=target.id)
            outcomes.append(await store.delete(target, message, entry))
        await client.aclose()
        return outcomes

    outcomes = asyncio.run(go())
    assert outcomes == [DeleteResult.DELETED, DeleteResult.ALREADY, DeleteResult.MISSING]
    assert redis_client.llen(queue) == 1
    deleted = RecordingStore(redis_client).get(recording.id)
    assert deleted is not None
    assert deleted.status is RecordingStatus.DELETED
