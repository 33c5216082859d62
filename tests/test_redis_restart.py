"""The whole system (the Procfile's web and worker processes, the sandbox) while its Redis
restarts mid-load: nothing accepted is lost or stuck.

Redis runs with AOF and is stopped with SIGTERM, so it writes everything it acknowledged
before it goes (a SIGKILL with ``appendfsync everysec`` may lose up to a second of
writes: see docs/operations.md).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import redis

from devkit.embedded_redis import EmbeddedRedis
from service.store.keys import Keys
from tests.conftest import new_numbers, wait_until
from tests.system import System

pytestmark = pytest.mark.slow

SESSIONS = 12


@pytest.fixture
def system(sandbox_url: str, tmp_path: Path) -> Iterator[tuple[System, EmbeddedRedis]]:
    server = EmbeddedRedis(tmp_path / "redis", persist=True).start()
    system = System(server.url, sandbox_url, tmp_path).start()
    try:
        yield system, server
    finally:
        system.stop()
        server.stop()


def _active(system: System, count: int) -> list[dict[str, Any]]:
    sessions = []
    for _ in range(count):
        first, second = new_numbers()
        response = system.api.post(
            "/v1/sessions",
            json={"first_party": first, "second_party": second},
            headers={"Prefer": "wait=20"},
        )
        assert response.status_code == 201, response.text
        sessions.append(response.json())
    return sessions


def _totals(system: System, *, refused_too: bool) -> dict[str, tuple[int, int]]:
    """Per VTS session: (legs ended, interactions) among the callbacks our web answered
    200, or, with ``refused_too``, among all it was sent: a callback answered 503 while
    Redis went away may still have been stored (its reply was lost), and reconciliation
    brings the counters to VTS's own totals, which count every call."""
    deliveries = system.sandbox.get("/_sandbox/deliveries").json()["deliveries"]
    accepted = {
        (d["session_uuid"], d["sequence_number"]): d["event_name"]
        for d in deliveries
        if d["channel"] == "session" and (refused_too or d["status_code"] == 200)
    }
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for (uuid, _), name in accepted.items():
        totals[uuid][0] += name.endswith(("Hangup", "Complete", "Failed")) and "Parties" not in name
        totals[uuid][1] += name == "SessionPartiesHangup"
    return {uuid: (legs, talks) for uuid, (legs, talks) in totals.items()}


def _accepted_sequences(system: System) -> dict[str, set[int]]:
    """Per VTS session: the SequenceNumbers of the callbacks our web answered 200."""
    deliveries = system.sandbox.get("/_sandbox/deliveries").json()["deliveries"]
    found: dict[str, set[int]] = defaultdict(set)
    for d in deliveries:
        if d["channel"] == "session" and d["status_code"] == 200:
            found[d["session_uuid"]].add(int(d["sequence_number"]))
    return found


def _applied_sequences(system: System, session_id: str) -> set[int]:
    timeline = system.api.get(f"/v1/sessions/{session_id}/events").json()["data"]
    return {e["sequence"] for e in timeline if e["type"] == "vts_event"}


def _shown(system: System, session_id: str) -> tuple[int, int]:
    session = system.api.get(f"/v1/sessions/{session_id}").json()
    return session["call_count"], session["interaction_count"]


def _refused(system: System) -> list[dict[str, Any]]:
    deliveries = system.sandbox.get("/_sandbox/deliveries").json()["deliveries"]
    return [d for d in deliveries if d["status_code"] != 200]


def _within(system: System, session_id: str, least: tuple[int, int], most: tuple[int, int]) -> Any:
    def check() -> bool:
        calls, talks = _shown(system, session_id)
        return least[0] <= calls <= most[0] and least[1] <= talks <= most[1]

    return check


def test_a_redis_restart_under_load_loses_nothing_accepted(
    system: tuple[System, EmbeddedRedis],
) -> None:
    """Calls and creates run while Redis restarts: every create answered 202 ends active
    with one VTS session, and every callback answered 200 is applied."""
    app, server = system
    sessions = _active(app, SESSIONS)
    created_during: list[str] = []
    answers: Counter[str] = Counter()
    rounds = 0
    stop = threading.Event()

    def load() -> None:
        nonlocal rounds
        while not stop.is_set():
            for session in sessions:
                url = f"/_sandbox/sessions/{session['vts_session_uuid']}/calls"
                app.sandbox.post(url, json={"caller": "vts", "duration": 5})
            first, second = new_numbers()
            body = {"first_party": first, "second_party": second}
            try:
                response = app.api.post("/v1/sessions", json=body, timeout=10)
            except httpx2.TransportError:
                answers["no answer"] += 1
            else:
                answers[str(response.status_code)] += 1
                if response.status_code == 202:
                    created_during.append(response.json()["id"])
            rounds += 1

    loader = threading.Thread(target=load)
    loader.start()
    try:
        wait_until(lambda: rounds >= 1, timeout=60)
        server.stop()  # down until the web has refused some callbacks
        wait_until(lambda: len(_refused(app)) >= 5, timeout=60)
        server.start()
        resumed = rounds
        wait_until(lambda: rounds >= resumed + 2, timeout=60)
    finally:
        stop.set()
        loader.join(120)
    assert app.sandbox.post("/_sandbox/drain", params={"timeout": 60}).status_code == 200

    accepted = _totals(app, refused_too=False)
    sent = _totals(app, refused_too=True)
    for session in sessions:
        uuid = session["vts_session_uuid"]
        least, most = accepted.get(uuid, (0, 0)), sent.get(uuid, (0, 0))
        wait_until(_within(app, session["id"], least, most), timeout=60, interval=0.2)
    # Not only as many: each one answered 200 is among those applied. One a worker was
    # applying as Redis went away is applied on its retry, after its backoff, which the
    # counts above may not show (not every event changes them).
    accepted_sequences = _accepted_sequences(app)

    def unapplied() -> dict[str, set[int]]:
        return {
            session["id"]: missing
            for session in sessions
            if (
                missing := accepted_sequences.get(session["vts_session_uuid"], set())
                - _applied_sequences(app, session["id"])
            )
        }

    try:
        wait_until(lambda: not unapplied(), timeout=60, interval=0.5)
    except AssertionError:
        raise AssertionError(f"answered 200, not applied: {unapplied()}") from None
    statuses = Counter(app.api.get(f"/v1/sessions/{i}").json()["status"] for i in created_during)
    refused = Counter(d["status_code"] for d in _refused(app))
    print(f"creates during load: {dict(answers)}; callbacks not accepted: {dict(refused)}")
    wait_until(
        lambda: all(app.api.get(f"/v1/sessions/{i}").json()["status"] == "active"
                    for i in created_during),
        timeout=60, interval=0.2,
    )  # fmt: skip
    vts_sessions = app.sandbox.get("/_sandbox/sessions").json()["sessions"]
    assert len(vts_sessions) == SESSIONS + len(created_during), statuses


def test_redis_paused_while_creates_wait_on_a_slow_vts(
    system: tuple[System, EmbeddedRedis], redis_pause: Any
) -> None:
    """Redis stops answering for 3 s while 16 creates wait on VTS: every one ends active
    with one VTS session, and no session lock is left behind."""
    app, server = system
    app.sandbox.put("/_sandbox/faults", json={"latency_ms": 2000})
    ids = []
    for _ in range(16):
        response = app.create(*new_numbers())
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    client = redis.Redis.from_url(server.url)
    try:
        wait_until(lambda: client.exists(*(Keys.session_lock(i) for i in ids)) >= 8, timeout=60)
        redis_pause(server, 3.0)
        app.sandbox.put("/_sandbox/faults", json={})
        wait_until(
            lambda: all(app.api.get(f"/v1/sessions/{i}").json()["status"] == "active" for i in ids),
            timeout=90, interval=0.2,
        )  # fmt: skip
        vts = app.sandbox.get("/_sandbox/sessions").json()["sessions"]
        assert len(vts) == len(ids)
        wait_until(lambda: client.exists(*(Keys.session_lock(i) for i in ids)) == 0, timeout=30)
    finally:
        client.close()


@pytest.fixture
def redis_pause() -> Any:
    """Stop the Redis process (SIGSTOP) for ``seconds``, then let it go on."""

    def pause(server: EmbeddedRedis, seconds: float) -> None:
        assert server.pid is not None
        os.kill(server.pid, signal.SIGSTOP)
        try:
            until = time.monotonic() + seconds
            while time.monotonic() < until:  # the fault's length, not a wait for anything
                time.sleep(0.1)
        finally:
            os.kill(server.pid, signal.SIGCONT)

    return pause
