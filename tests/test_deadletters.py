"""Dead letters and replays: a message that fails lands in the dead-letter queue, is
listed (without numbers), replayed, and then succeeds exactly once."""

from __future__ import annotations

import os
import subprocess
import sys

import dramatiq
import httpx2
import redis
import redis.asyncio

from service.store import DeadLetters, Queue, StoredEvents
from service.store.keys import Keys
from service.tools import deadletters
from service.vts.callbacks import check
from tests.conftest import API_KEY, AUTH_ID, AUTH_TOKEN, new_numbers, store_event, wait_until


def _cli(redis_url: str, *args: str) -> str:
    env = {**os.environ, "REDIS_URL": redis_url, "VTS_AUTH_ID": AUTH_ID,
           "VTS_AUTH_TOKEN": AUTH_TOKEN, "PUBLIC_BASE_URL": "http://127.0.0.1:9",
           "API_KEYS": API_KEY}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "service", *args], env=env, capture_output=True, text=True,
        check=True, timeout=30,
    )  # fmt: skip
    return result.stdout


def test_failed_message_is_listed_replayed_and_applied_once(
    api: httpx2.Client,
    worker: dramatiq.Worker,
    redis_client: redis.Redis,
    redis_url: str,
) -> None:
    """A callback whose stored record is corrupt dead-letters; once mended and replayed,
    it is applied once, and replaying again changes nothing."""
    first, second = new_numbers()
    session = api.post(
        "/v1/sessions",
        json={"first_party": first, "second_party": second},
        headers={"Prefer": "wait=20"},
    ).json()
    params = {"EventName": "SessionFirstPartyHangup", "SessionUUID": session["vts_session_uuid"],
              "SequenceNumber": "1", "BilledDuration": "60", "Amount": "0.0085",
              "FirstParty": first[1:]}  # fmt: skip
    store = DeadLetters(redis_client)
    # Paused, so that the worker cannot apply the event before its record is damaged.
    worker.pause()
    event_id = store_event(redis_url, check("session", params))
    good = redis_client.hget(Keys.webhook(event_id), "params")
    redis_client.hset(Keys.webhook(event_id), "params", "{corrupt")
    worker.resume()
    [letter] = wait_until(lambda: list(deadletters.dead_letters(store)), timeout=60)
    assert letter.message["actor_name"] == "apply_event"
    assert "JSONDecodeError" in letter.error
    listed = _cli(redis_url, "dlq", "list")
    assert letter.redis_id in listed
    assert first[2:] not in listed + _cli(redis_url, "dlq", "show", letter.redis_id)

    redis_client.hset(Keys.webhook(event_id), "params", good)
    assert "replayed" in _cli(redis_url, "dlq", "replay", letter.redis_id)
    wait_until(lambda: api.get(f"/v1/sessions/{session['id']}").json()["call_count"] == 1)
    assert not deadletters.replay(store, letter)
    assert (
        deadletters.replay_webhooks(StoredEvents(redis_client), Queue(redis_client), [event_id])
        == 1
    )
    _cli(redis_url, "replay-webhooks", "--since", "2000-01-01T00:00:00+00:00")
    wait_until(lambda: redis_client.llen(Keys.queue("events")) == 0)
    wait_until(lambda: int(redis_client.hget(Keys.event_stats(), "applied") or 0) >= 1)
    assert api.get(f"/v1/sessions/{session['id']}").json()["call_count"] == 1
    assert list(deadletters.dead_letters(store)) == []
