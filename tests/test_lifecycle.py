"""Graceful lifecycle: SIGTERM drains the web and the workers; /readyz follows Redis."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2
import pytest
import redis

from devkit.embedded_redis import EmbeddedRedis
from devkit.sandbox.server import create_sandbox_app
from service.store.keys import Keys
from tests.conftest import new_numbers, sandbox_with, wait_until
from tests.servers import serve
from tests.system import System

pytestmark = pytest.mark.slow


@pytest.fixture
def system(redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> Iterator[System]:
    redis_client.flushdb()
    with serve(create_sandbox_app(sandbox_with())) as sandbox_url:
        system = System(redis_url, sandbox_url, tmp_path).start()
        try:
            yield system
        finally:
            system.stop()


def _terminate(system: System, name: str) -> int:
    """SIGTERM to the main process only, as an orchestrator sends it."""
    process = system.processes.pop(name)
    process.terminate()
    return process.wait(40)


def test_sigterm_to_a_busy_worker_requeues_and_loses_or_doubles_nothing(
    system: System, redis_client: redis.Redis
) -> None:
    """Stopped mid-work, the worker finishes what runs, hands back what it held, and
    after a restart every session exists once at VTS."""
    system.sandbox.put("/_sandbox/faults", json={"latency_ms": 300})
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda _: system.create(*new_numbers()).json()["id"], range(60)))
    wait_until(lambda: system.sandbox.get("/_sandbox/stats").json()["sessions_created"] >= 5)
    assert _terminate(system, "worker") == 0
    # Nothing is left held by the stopped worker: all unfinished work is back on the queue.
    held = [k for k in redis_client.keys("dramatiq:__acks__.*") if redis_client.scard(k)]
    assert held == []
    created = system.sandbox.get("/_sandbox/stats").json()["sessions_created"]
    assert redis_client.llen(Keys.queue("sessions")) >= 60 - created
    system.sandbox.delete("/_sandbox/faults")
    system.restart("worker")

    def statuses() -> dict[str, int]:
        found = [system.api.get(f"/v1/sessions/{i}").json()["status"] for i in ids]
        return {s: found.count(s) for s in set(found)}

    wait_until(lambda: statuses() == {"active": 60}, timeout=60, interval=0.5)
    assert system.sandbox.get("/_sandbox/stats").json()["sessions_created"] == 60


def test_sigterm_lets_the_web_finish_requests_in_flight(system: System) -> None:
    """A request that is waiting (Prefer: wait) when the web is told to stop still gets
    its answer."""
    system.sandbox.put("/_sandbox/faults", json={"latency_ms": 1500})
    answers: list[int] = []

    def ask() -> None:
        first, second = new_numbers()
        response = system.api.post(
            "/v1/sessions",
            json={"first_party": first, "second_party": second},
            headers={"Prefer": "wait=10"},
        )
        answers.append(response.status_code)

    asking = threading.Thread(target=ask)
    asking.start()
    wait_until(lambda: system.sandbox.get("/_sandbox/stats").json()["received"], timeout=10)
    # uvicorn re-raises the signal once it has shut down, as a process killed by it would.
    assert _terminate(system, "web") in (0, -signal.SIGTERM)
    asking.join(20)
    assert answers == [201]


def test_readyz_fails_while_redis_is_unreachable(
    system: System, redis_server: EmbeddedRedis | None
) -> None:
    """/readyz answers 503 while Redis does not answer, and 200 again after."""
    if redis_server is None or redis_server.pid is None:
        pytest.skip("needs the test run's own redis-server to stop")
    assert system.api.get("/readyz").status_code == 200
    os.kill(redis_server.pid, signal.SIGSTOP)
    try:
        assert system.api.get("/readyz", timeout=10).status_code == 503
        assert system.api.get("/healthz").status_code == 200
    finally:
        os.kill(redis_server.pid, signal.SIGCONT)
    wait_until(lambda: system.api.get("/readyz").status_code == 200, timeout=10)
    assert httpx2.get(str(system.api.base_url) + "/healthz").status_code == 200
