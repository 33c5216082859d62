"""A worker process killed (SIGKILL) in the middle of creating sessions: another worker
takes them up within seconds, adopts what VTS made, and no VTS session is orphaned."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from service.store.keys import Keys
from tests.conftest import new_numbers, wait_until
from tests.system import System

pytestmark = pytest.mark.slow

SESSIONS = 4


@pytest.fixture
def system(redis_url: str, sandbox_url: str, tmp_path: Path) -> Iterator[System]:
    system = System(redis_url, sandbox_url, tmp_path).start()
    try:
        yield system
    finally:
        system.stop()


def test_a_killed_workers_creates_are_taken_up_within_seconds(
    system: System, redis_client: redis.Redis
) -> None:
    """VTS has made the sessions and the worker holds their leases when it is killed; a new
    worker makes every one active, with one VTS session each."""
    system.sandbox.put("/_sandbox/faults", json={"stall_after_create": 60})
    ids = []
    for _ in range(SESSIONS):
        response = system.create(*new_numbers())
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])

    def mid_create() -> bool:
        made = len(system.sandbox.get("/_sandbox/sessions").json()["sessions"])
        held = redis_client.exists(*(Keys.session_lock(i) for i in ids))
        return made == SESSIONS and held == SESSIONS

    wait_until(mid_create, timeout=60, interval=0.1)
    system.kill("worker")
    killed = time.monotonic()
    system.sandbox.put("/_sandbox/faults", json={})
    system.restart("worker")

    def all_active() -> bool:
        statuses = [system.api.get(f"/v1/sessions/{i}").json()["status"] for i in ids]
        return statuses == ["active"] * SESSIONS

    wait_until(all_active, timeout=90, interval=0.2)
    print(f"sessions of the killed worker active {time.monotonic() - killed:.1f} s after")
    vts = system.sandbox.get("/_sandbox/sessions").json()["sessions"]
    assert len(vts) == SESSIONS
    uuids = {system.api.get(f"/v1/sessions/{i}").json()["vts_session_uuid"] for i in ids}
    assert uuids == {s["session_uuid"] for s in vts}
