"""A session's timeline is shown oldest first, by when each thing happened, whatever the
order in which VTS's callbacks arrived and were applied."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx2
import redis

from service.store import StoredEvents
from service.store.keys import Keys
from service.vts.callbacks import Event
from tests.conftest import store_event

ARRIVAL = [3, 1, 4, 5, 2, 6]


def _event(session_uuid: str, sequence: int, start: datetime) -> Event:
    moment = start + timedelta(seconds=sequence)
    return Event(
        "session",
        {
            "EventName": "SessionFirstPartyRinging",
            "SessionUUID": session_uuid,
            "SequenceNumber": str(sequence),
            "EventTimestamp": moment.strftime("%Y-%m-%d %H:%M:%S"),
        },
    )


def test_events_applied_out_of_order_are_shown_oldest_first(
    api: httpx2.Client, redis_url: str, redis_client: redis.Redis
) -> None:
    """Callbacks applied as sequence 3, 1, 4, 5, 2, 6 are shown as 1 to 6, times rising."""
    session_id = api.post(
        "/v1/sessions", json={"first_party": "+14155552671", "second_party": "+14155552672"}
    ).json()["id"]
    session_uuid = str(uuid.uuid4())
    redis_client.set(Keys.vts_session(session_uuid), session_id)
    events, start = StoredEvents(redis_client), datetime.now(UTC) + timedelta(minutes=1)
    for sequence in ARRIVAL:
        event_id = store_event(redis_url, _event(session_uuid, sequence, start))
        applied = events.apply_event(event_id, session_uuid, clock=start, reconcile_after={})
        assert applied.outcome == "applied"
    entries = api.get(f"/v1/sessions/{session_id}/events").json()["data"]
    shown = [entry for entry in entries if entry["type"] == "vts_event"]
    assert [entry["sequence"] for entry in shown] == sorted(ARRIVAL)
    times = [datetime.fromisoformat(entry["event_time"]) for entry in shown]
    assert times == sorted(times)
    assert entries[0]["type"] == "requested"
