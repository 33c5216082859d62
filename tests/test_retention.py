"""Retention: an ended session and everything hanging off it (timeline, applied events,
indexes, idempotency record, recordings and their files, stored callbacks) are deleted
SESSION_RETENTION after it ended; live sessions are untouched."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dramatiq
import httpx2
import pytest
import redis
import redis.asyncio

from service import messages
from service.models import Status
from service.settings import Settings
from service.store import AsyncStoredEvents, Schedule, Sessions
from service.store.keys import Keys
from service.vts.callbacks import Event
from tests.conftest import event_id, loopback_settings, stored_session, wait_until
from tests.datalife import end, forms, holding, late_leg_end, recorded_session, store_unseen
from tests.test_webhooks import SESSION, Caller

RETENTION = 3


@pytest.fixture
def settings(redis_url: str, sandbox_url: str, web_port: int, recordings_dir: Path) -> Settings:
    return loopback_settings(
        redis_url, sandbox_url, web_port, recordings_dir=recordings_dir, session_retention=RETENTION
    )


def test_ended_session_is_purged_and_live_one_kept(
    api: httpx2.Client,
    sandbox: httpx2.Client,
    worker: dramatiq.Worker,
    redis_client: redis.Redis,
    recordings_dir: Path,
) -> None:
    """After the retention no key or value of the ended session is left in Redis and its
    file is gone from storage; the live session, its timeline and its file are intact."""
    ended = recorded_session(api, sandbox, metadata={"order": "A-1"})
    live = recorded_session(api, sandbox)
    keyed = api.post(
        "/v1/sessions",
        json={"first_party": ended.numbers[0], "second_party": "+14155559876"},
        headers={"Idempotency-Key": "retention-1"},
    ).json()
    keyed = wait_until(lambda: _active(api, keyed["id"]))
    end(api, ended.id)
    end(api, keyed["id"])
    gone = [ended.id, keyed["id"]]
    uuids = [ended.session["vts_session_uuid"], keyed["vts_session_uuid"]]
    marks = [*(s.encode() for s in gone + uuids), ended.recording["id"].encode()]
    marks += forms(ended.numbers[0]) + forms(ended.numbers[1])

    wait_until(lambda: not holding(redis_client, *marks), timeout=60, interval=0.5)
    for session_id in gone:
        assert api.get(f"/v1/sessions/{session_id}").status_code == 404
    assert api.get(ended.recording["url"]).status_code == 404
    files = {p.name for p in recordings_dir.iterdir()}
    assert files == {f"{live.recording['id']}.wav"}

    listed = [s["id"] for s in api.get("/v1/sessions").json()["data"]]
    assert listed == [live.id]
    assert api.get(f"/v1/sessions/{live.id}").json()["status"] == "active"
    assert api.get(live.recording["url"]).status_code == 200
    timeline = api.get(f"/v1/sessions/{live.id}/events").json()["data"]
    assert [e["type"] for e in timeline][:2] == ["requested", "created"]
    replayed = api.post(
        "/v1/sessions",
        json={"first_party": ended.numbers[0], "second_party": "+14155559876"},
        headers={"Idempotency-Key": "retention-1"},
    )
    assert replayed.json()["id"] != keyed["id"]  # the key went with its session


def _active(api: httpx2.Client, session_id: str) -> dict[str, Any] | None:
    found: dict[str, Any] = api.get(f"/v1/sessions/{session_id}").json()
    return found if found["status"] == "active" else None


def test_ending_a_session_schedules_its_purge(redis_url: str, redis_client: redis.Redis) -> None:
    """Failing or expiring a session puts its purge on the schedule, retention later;
    a pending or live session has none."""
    sessions = Sessions(redis_client, retention=3600)
    stored_session(redis_url, "ses_failing")
    assert redis_client.zscore(Keys.schedule(), "purge:ses_failing") is None
    sessions.transition("ses_failing", Status.FAILED, allowed=[Status.PENDING])
    due = redis_client.zscore(Keys.schedule(), "purge:ses_failing")
    assert due is not None
    stored_session(redis_url, "ses_live")
    sessions.transition("ses_live", Status.ACTIVE, allowed=[Status.PENDING])
    assert redis_client.zscore(Keys.schedule(), "purge:ses_live") is None
    sessions.transition("ses_live", Status.EXPIRED, allowed=[Status.ACTIVE])
    later = redis_client.zscore(Keys.schedule(), "purge:ses_live")
    assert later is not None
    assert later >= due
    due_in_two_hours = Schedule(redis_client).take_due(datetime.now(UTC) + timedelta(hours=2))
    assert due_in_two_hours == [("purge", "ses_failing"), ("purge", "ses_live")]


def test_callback_index_is_trimmed_by_age(redis_url: str, redis_client: redis.Redis) -> None:
    """The index of stored callbacks forgets entries older than the callbacks' lifetime."""
    redis_client.zadd(Keys.webhooks(), {"old-event": 1_000})
    params = {"EventName": "SessionFirstPartyAnswer", "SessionUUID": "u-1", "SequenceNumber": "1"}
    event = Event("session", params)

    async def ingest() -> None:
        client = redis.asyncio.Redis.from_url(redis_url)
        message = messages.APPLY_EVENT.message(messages.EventRef(event_id(event)))
        await AsyncStoredEvents(client).ingest_webhook(
            event, [event_id(event)], message, nonce=None, received_ms=1_700_000_000_000
        )
        await client.aclose()

    asyncio.run(ingest())
    assert redis_client.zrange(Keys.webhooks(), 0, -1) == [event_id(event).encode()]
    assert redis_client.smembers(Keys.callbacks("u-1")) == {event_id(event).encode()}
    assert redis_client.ttl(Keys.callbacks("u-1")) > 0


def test_a_callback_for_a_purged_session_is_neither_stored_nor_kept(
    api: httpx2.Client,
    sandbox: httpx2.Client,
    worker: dramatiq.Worker,
    redis_client: redis.Redis,
    settings: Settings,
    web_url: str,
) -> None:
    """Once a session is purged, a signed callback for its VTS session is answered 200 and
    stored nowhere, and one a web stored before it could know is dropped and deleted by
    the worker rather than kept as an orphan."""
    ended = recorded_session(api, sandbox)
    end(api, ended.id)
    uuid = ended.session["vts_session_uuid"]
    wait_until(lambda: api.get(f"/v1/sessions/{ended.id}").status_code == 404, timeout=60)
    wait_until(lambda: not redis_client.exists(Keys.callbacks(uuid)), timeout=30)
    caller = Caller(web_url, settings.public_base_url)
    assert caller.post(SESSION, late_leg_end(uuid, ended.numbers[0])).status_code == 200
    caller.client.close()
    assert redis_client.zcard(Keys.webhooks()) == 0
    assert not redis_client.exists(Keys.callbacks(uuid))

    store_unseen(redis_client, "stored-before-purge", late_leg_end(uuid, ended.numbers[0], 901))
    wait_until(lambda: not redis_client.exists(Keys.webhook("stored-before-purge")), timeout=30)
    assert redis_client.zcard(Keys.orphan_events()) == 0
    assert not holding(redis_client, *forms(ended.numbers[0]), *forms(ended.numbers[1]))
