"""Callbacks end to end: the sandbox places calls and sends VTS's signed events to the web
(a real process), the workers (real processes) apply them; every session's counters must
equal the sandbox's totals exactly, whatever the delivery or the processes go through."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis

from devkit.embedded_redis import EmbeddedRedis
from devkit.sandbox.server import create_sandbox_app
from service.store.keys import Keys
from service.vts.callbacks import Event
from tests.conftest import event_id, new_numbers, sandbox_with, wait_until
from tests.servers import serve
from tests.system import System

pytestmark = pytest.mark.slow

SESSIONS = 80
# Each session's calls, by length in seconds.
CALLS = (20, 57, 94)
# The sandbox makes a whole call at once, its end in the future by its length; until
# RECONCILE_SETTLE after a call's end, reconciliation takes a difference for callbacks
# still on their way. Tests that wait for reconciliation place short calls.
SHORT_CALLS = (2, 5, 9)


@pytest.fixture(params=["hangup", "complete"], scope="module")
def family(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@contextmanager
def _system(redis_url: str, family: str, directory: Path, settle_seconds: int) -> Iterator[System]:
    # VTS's patience with us is longer than the web's with Redis (2 s), so that while
    # Redis is out VTS sees our 503s rather than its own timeouts, and long enough that a
    # loaded machine never makes it give up on a callback we would have answered.
    config = sandbox_with(event_family=family, callback_timeout=30.0, rate_limit=5000)
    with serve(create_sandbox_app(config)) as sandbox_url:
        system = System(
            redis_url,
            sandbox_url,
            directory,
            extra_env={
                "RECONCILE_INTERVAL": "3",
                "RECONCILE_SETTLE": str(settle_seconds),
                "VTS_RATE_LIMIT": "5000",
                "VTS_APP_BUDGET": "1000000",
            },
        ).start()
        try:
            yield system
        finally:
            system.stop()


@pytest.fixture
def system(
    redis_url: str, redis_client: redis.Redis, family: str, tmp_path: Path
) -> Iterator[System]:
    """The system as deployed: a difference with VTS must hold still 30 s to be drift, so
    callbacks merely delayed by a loaded machine are never taken for lost ones."""
    redis_client.flushdb()
    with _system(redis_url, family, tmp_path, settle_seconds=30) as system:
        yield system


@pytest.fixture
def quickly_reconciled(
    redis_url: str, redis_client: redis.Redis, family: str, tmp_path: Path
) -> Iterator[System]:
    """The same, reconciling a difference after 3 s: for tests that wait for
    reconciliation to repair what an outage lost."""
    redis_client.flushdb()
    with _system(redis_url, family, tmp_path, settle_seconds=3) as system:
        yield system


def _parallel(work: Any, items: list[Any], threads: int = 16) -> list[Any]:
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(work, items))


def _active_sessions(system: System, count: int) -> list[dict[str, Any]]:
    ids = _parallel(lambda _: system.create(*new_numbers()).json()["id"], list(range(count)))

    def all_active() -> list[dict[str, Any]]:
        sessions = [system.api.get(f"/v1/sessions/{i}").json() for i in ids]
        return sessions if all(s["status"] == "active" for s in sessions) else []

    result: list[dict[str, Any]] = wait_until(all_active, timeout=120, interval=0.5)
    return result


def _place_calls(
    system: System, sessions: list[dict[str, Any]], lengths: tuple[int, ...] = CALLS
) -> None:
    def place(session: dict[str, Any]) -> None:
        for call, length in enumerate(lengths):
            body = {"caller": ("first", "second", "vts")[call % 3], "duration": length}
            url = f"/_sandbox/sessions/{session['vts_session_uuid']}/calls"
            assert system.sandbox.post(url, json=body).status_code == 202

    _parallel(place, sessions)


def _drain(system: System) -> None:
    for _ in range(10):
        if system.sandbox.post("/_sandbox/drain", params={"timeout": "60"}).status_code == 200:
            return
    raise AssertionError("the sandbox did not finish delivering")


def _truth(system: System) -> dict[str, tuple[int, int, Decimal, int]]:
    found = system.sandbox.get("/_sandbox/sessions").json()["sessions"]
    return {
        s["session_uuid"]: (
            int(s["total_call_count"]),
            int(s["total_call_billed_duration"]),
            Decimal(s["total_call_amount"]),
            sum(
                i["first_party_status"] == i["second_party_status"] == "completed"
                for i in s["interaction"] or []
            ),
        )
        for s in found
    }


def _ours(
    system: System, sessions: list[dict[str, Any]]
) -> dict[str, tuple[int, int, Decimal, int]]:
    def one(session: dict[str, Any]) -> tuple[str, tuple[int, int, Decimal, int]]:
        s = system.api.get(f"/v1/sessions/{session['id']}").json()
        totals = (s["call_count"], s["billed_duration"], Decimal(s["call_amount"]),
                  s["interaction_count"])  # fmt: skip
        return s["vts_session_uuid"], totals

    return dict(_parallel(one, sessions))


def _converged(system: System, sessions: list[dict[str, Any]]) -> bool:
    truth, ours = _truth(system), _ours(system, sessions)
    assert all(t[0] > 0 for t in truth.values())
    return truth == ours


def _drift(redis_client: redis.Redis) -> int:
    return int(redis_client.hget(Keys.reconcile_stats(), "sessions_with_drift") or 0)


def test_duplicated_and_shuffled_callbacks_count_exactly(
    system: System, redis_client: redis.Redis
) -> None:
    """80 sessions x 3 calls, 20% of callbacks duplicated and 20% reordered: every
    session's counters equal VTS's totals, from the events alone (no drift to correct)."""
    sessions = _active_sessions(system, SESSIONS)
    faults = {"callback_duplicate_rate": 0.2, "callback_reorder_rate": 0.2, "seed": 5}
    system.sandbox.put("/_sandbox/faults", json=faults)
    _place_calls(system, sessions)
    _drain(system)
    wait_until(lambda: _converged(system, sessions), timeout=120, interval=1)
    assert _drift(redis_client) == 0
    assert int(redis_client.hget(Keys.webhook_stats(), "duplicate") or 0) > 0


def test_a_worker_killed_mid_stream_loses_and_doubles_nothing(
    system: System, redis_client: redis.Redis
) -> None:
    """SIGKILL the worker processes while events flow, start them again: counts exact."""
    sessions = _active_sessions(system, SESSIONS)
    system.sandbox.put("/_sandbox/faults", json={"callback_duplicate_rate": 0.2, "seed": 6})
    _place_calls(system, sessions[: SESSIONS // 2])
    wait_until(lambda: redis_client.hget(Keys.event_stats(), "applied"), timeout=30)
    system.kill("worker")
    _place_calls(system, sessions[SESSIONS // 2 :])
    system.restart("worker")
    _drain(system)
    wait_until(lambda: _converged(system, sessions), timeout=180, interval=1)
    assert _drift(redis_client) == 0


def test_redis_stopped_mid_stream_answers_503_and_loses_nothing_it_accepted(
    quickly_reconciled: System, redis_client: redis.Redis, redis_server: EmbeddedRedis | None
) -> None:
    """Redis frozen for 7 s while callbacks arrive: the web answers 503 meanwhile, every
    callback answered 200 is stored, and reconciliation brings every total to VTS's."""
    if redis_server is None or redis_server.pid is None:
        pytest.skip("needs the test run's own redis-server to stop")
    system = quickly_reconciled
    sessions = _active_sessions(system, SESSIONS)
    _place_calls(system, sessions[: SESSIONS // 2], SHORT_CALLS)
    os.kill(redis_server.pid, signal.SIGSTOP)
    try:
        _place_calls(system, sessions[SESSIONS // 2 :], SHORT_CALLS)
        time.sleep(7)  # the outage itself, not coordination
    finally:
        os.kill(redis_server.pid, signal.SIGCONT)
    _drain(system)
    deliveries = system.sandbox.get("/_sandbox/deliveries").json()["deliveries"]
    assert any(d["status_code"] == 503 for d in deliveries)
    _assert_every_accepted_event_is_stored(system, redis_client, deliveries)
    wait_until(lambda: _converged(system, sessions), timeout=180, interval=1)


def _assert_every_accepted_event_is_stored(
    system: System, redis_client: redis.Redis, deliveries: list[dict[str, Any]]
) -> None:
    accepted = {(d["session_uuid"], d["sequence_number"]) for d in deliveries
                if d["status_code"] == 200}  # fmt: skip
    for session_uuid in {uuid for uuid, _ in accepted}:
        events = system.sandbox.get(f"/_sandbox/sessions/{session_uuid}/events").json()["events"]
        for params in events:
            key = (session_uuid, int(params["SequenceNumber"]))
            if key in accepted:
                assert redis_client.exists(Keys.webhook(event_id(Event("session", params)))), key
