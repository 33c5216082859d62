"""Changes to a session coalesce: a burst of PATCHes costs a VTS update per update
interval, the last value asked for each field wins, and a busy session is retried without
an error or a traceback in the logs."""

from __future__ import annotations

import json
import math
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dramatiq
import httpx2
import pytest
import redis

from service.settings import Settings
from service.store import Sessions
from service.store.keys import Keys
from tests.conftest import new_numbers, wait_until
from workers import boot, sessions

INTERVAL = 1.0  # SESSION_UPDATE_INTERVAL's default, which the settings fixture keeps


def _active_session(api: httpx2.Client) -> dict[str, Any]:
    first, second = new_numbers()
    body = {"first_party": first, "second_party": second}
    session: dict[str, Any] = api.post(
        "/v1/sessions", json=body, headers={"Prefer": "wait=20"}
    ).json()
    assert session["status"] == "active", session
    return session


def _vts_updates(sandbox: httpx2.Client) -> int:
    return int(sandbox.get("/_sandbox/stats").json()["received"].get("update", 0))


def _log_records(text: str) -> list[dict[str, Any]]:
    lines = (line for line in text.splitlines() if line.startswith("{"))
    return [json.loads(line) for line in lines]


def test_a_burst_of_patches_costs_one_update_per_interval_and_the_last_value_wins(
    api: httpx2.Client, sandbox: httpx2.Client, worker: dramatiq.Worker
) -> None:
    """200 PATCHes from 8 clients cost at most one VTS update per interval (plus the
    first), and each field ends with the value asked last."""
    session = _active_session(api)
    path = f"/v1/sessions/{session['id']}"

    def patch(i: int) -> int:
        return api.patch(path, json={"ring_timeout": 5 + i % 100}).status_code

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(patch, range(200)))
    assert api.patch(path, json={"ring_timeout": 42}).status_code == 202
    assert api.patch(path, json={"call_time_limit": 600}).status_code == 202
    burst = time.monotonic() - started
    assert set(statuses) == {202}

    def settled() -> bool:
        now = api.get(path).json()
        return bool(now["ring_timeout"] == 42 and now["call_time_limit"] == 600)

    wait_until(settled, timeout=30, interval=0.1)
    # One update at once, then at most one per interval while the burst lasted, and the
    # last one for what came in at its very end.
    assert _vts_updates(sandbox) <= 2 + math.ceil(burst / INTERVAL)
    events = api.get(f"{path}/events").json()["data"]
    assert len([e for e in events if e["type"] == "updated"]) == _vts_updates(sandbox)


def test_a_busy_session_is_retried_without_an_error_or_traceback(
    api: httpx2.Client,
    worker: dramatiq.Worker,
    redis_client: redis.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """While another worker holds the session, its update is retried (logged as a retry,
    not as an error with a traceback) and applied once the session is free."""
    session = _active_session(api)
    sessions, token = Sessions(redis_client), uuid.uuid4().hex
    # The create lets go of the session just after it shows active.
    wait_until(lambda: sessions.lock_session(session["id"], token, 60_000), timeout=10)
    capsys.readouterr()
    assert api.patch(f"/v1/sessions/{session['id']}", json={"ring_timeout": 30}).status_code == 202

    def retried() -> bool:
        records = _log_records(capsys.readouterr().err)
        seen.extend(records)
        return any(r.get("outcome") == "Retry" for r in records)

    seen: list[dict[str, Any]] = []
    wait_until(retried, timeout=20, interval=0.1)
    sessions.unlock_session(session["id"], token)
    wait_until(
        lambda: api.get(f"/v1/sessions/{session['id']}").json()["ring_timeout"] == 30,
        timeout=30,
        interval=0.1,
    )
    seen.extend(_log_records(capsys.readouterr().err))
    assert [r for r in seen if r["level"] in {"error", "critical"}] == []
    assert not [r for r in seen if "exception" in r or "Traceback" in json.dumps(r)]


def test_changes_given_up_on_do_not_hold_back_the_next_ones(
    api: httpx2.Client, settings: Settings, redis_client: redis.Redis
) -> None:
    """When an update's retries run out its changes are dropped (and the timeline says so),
    and the next change asked queues an update of its own."""
    first, second = new_numbers()
    session_id = api.post("/v1/sessions", json={"first_party": first, "second_party": second})
    path = f"/v1/sessions/{session_id.json()['id']}"
    assert api.patch(path, json={"record": True}).status_code == 202
    before = _queued_updates(redis_client)
    assert api.patch(path, json={"ring_timeout": 20}).status_code == 202
    assert _queued_updates(redis_client) == before == 1
    deps = boot.build(settings, redis_client)
    try:
        sessions.give_up_update(deps, session_id.json()["id"])
    finally:
        deps.close()
    failed = [e for e in api.get(f"{path}/events").json()["data"] if e["type"] == "update_failed"]
    assert [e["changes"] for e in failed] == [["record", "ring_timeout"]]
    assert api.patch(path, json={"ring_timeout": 30}).status_code == 202
    assert _queued_updates(redis_client) == 2


def _queued_updates(client: redis.Redis) -> int:
    raw: dict[bytes, bytes] = client.hgetall(Keys.queue_messages("sessions"))  # type: ignore[assignment]
    return sum(json.loads(m)["actor_name"] == "update_session" for m in raw.values())
