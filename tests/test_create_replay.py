"""Replaying the dead letter of a create given up: the create is tried again, with the
lookup for a session VTS may already have made, and the session leaves ``failed`` only
once VTS has it."""

from __future__ import annotations

from collections import Counter

import dramatiq
import httpx2
import pytest
import redis

from service import messages
from service.settings import Settings
from service.store import DeadLetters
from service.tools import deadletters
from tests.conftest import make_settings, new_numbers, wait_until


@pytest.fixture
def settings(redis_url: str, sandbox_url: str, web_port: int) -> Settings:
    return make_settings(
        redis_url,
        sandbox_url,
        create_max_retries=1,
        vts_timeout=0.5,
        public_base_url=f"http://127.0.0.1:{web_port}",
    )


def _create(api: httpx2.Client) -> tuple[str, tuple[str, str]]:
    parties = new_numbers()
    body = {"first_party": parties[0], "second_party": parties[1]}
    response = api.post("/v1/sessions", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["id"]), parties


def _status(api: httpx2.Client, session_id: str) -> str:
    return str(api.get(f"/v1/sessions/{session_id}").json()["status"])


def _replay_the_create(store: DeadLetters) -> None:
    letters = [
        letter
        for letter in deadletters.dead_letters(store, (messages.SESSIONS_QUEUE,))
        if letter.message["actor_name"] == messages.CREATE_SESSION.name
    ]
    assert len(letters) == 1
    assert deadletters.replay(store, letters[0])


def _dead_create(store: DeadLetters) -> bool:
    return any(
        letter.message["actor_name"] == messages.CREATE_SESSION.name
        for letter in deadletters.dead_letters(store, (messages.SESSIONS_QUEUE,))
    )


def _vts_sessions_for(sandbox: httpx2.Client, parties: tuple[str, str]) -> int:
    listed = sandbox.get("/_sandbox/sessions").json()["sessions"]
    return Counter((s["first_party"], s["second_party"]) for s in listed)[parties]


def test_a_replayed_create_adopts_the_session_vts_made(
    api: httpx2.Client, sandbox: httpx2.Client, worker: dramatiq.Worker, redis_client: redis.Redis
) -> None:
    """VTS made the session but every answer was lost, and the lookup failed too: the
    create is given up. Replayed, it finds that session and adopts it: one VTS session."""
    store = DeadLetters(redis_client)
    faults = {"stall_after_create": 2, "error_rate": 1.0, "error_paths": ["list"]}
    sandbox.put("/_sandbox/faults", json=faults)
    session_id, parties = _create(api)
    wait_until(lambda: _status(api, session_id) == "failed", timeout=60)
    wait_until(lambda: _dead_create(store), timeout=30)
    sandbox.put("/_sandbox/faults", json={})
    _replay_the_create(store)
    wait_until(lambda: _status(api, session_id) == "active", timeout=60)
    session = api.get(f"/v1/sessions/{session_id}").json()
    assert session["error"] is None
    assert _vts_sessions_for(sandbox, parties) == 1


def test_a_replayed_create_stays_failed_until_vts_has_the_session(
    api: httpx2.Client, sandbox: httpx2.Client, worker: dramatiq.Worker, redis_client: redis.Redis
) -> None:
    """Replayed while VTS still fails, the session stays failed; replayed once VTS is
    back, it is created, once."""
    store = DeadLetters(redis_client)
    sandbox.put("/_sandbox/faults", json={"error_rate": 1.0, "error_paths": ["create"]})
    session_id, parties = _create(api)
    wait_until(lambda: _dead_create(store), timeout=60)
    _replay_the_create(store)
    wait_until(lambda: _dead_create(store), timeout=60)
    assert _status(api, session_id) == "failed"
    sandbox.put("/_sandbox/faults", json={})
    _replay_the_create(store)
    wait_until(lambda: _status(api, session_id) == "active", timeout=60)
    assert _vts_sessions_for(sandbox, parties) == 1


def test_one_failure_leaves_one_dead_letter(
    api: httpx2.Client, sandbox: httpx2.Client, worker: dramatiq.Worker, redis_client: redis.Redis
) -> None:
    """A create given up, whose app's endpoint cannot be reached either, leaves one
    dead letter; replayed while VTS still fails it leaves one again, and replayed once
    VTS is back, none (the app's notifications are records, never dead letters)."""
    store = DeadLetters(redis_client)
    sandbox.put("/_sandbox/faults", json={"error_rate": 1.0, "error_paths": ["create"]})
    parties = new_numbers()
    body = {"first_party": parties[0], "second_party": parties[1],
            "callback_url": "https://receiver.invalid/hook"}  # fmt: skip
    session_id = api.post("/v1/sessions", json=body).json()["id"]
    wait_until(lambda: _dead_create(store), timeout=60)
    log = f"/v1/sessions/{session_id}/notifications"
    wait_until(lambda: [n["attempts"] != [] for n in api.get(log).json()["data"]] == [True])
    assert len(list(deadletters.dead_letters(store))) == 1
    _replay_the_create(store)
    wait_until(lambda: _dead_create(store), timeout=60)
    assert len(list(deadletters.dead_letters(store))) == 1
    sandbox.put("/_sandbox/faults", json={})
    _replay_the_create(store)
    wait_until(lambda: _status(api, session_id) == "active", timeout=60)
    assert list(deadletters.dead_letters(store)) == []
