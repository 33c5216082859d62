"""Creating sessions when VTS misbehaves: errors, stalls, 429s. One app request, one VTS
session, always."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dramatiq
import httpx2
import pytest

from service.settings import Settings
from tests.conftest import make_settings, new_numbers, wait_until


def _create_many(api: httpx2.Client, count: int) -> list[str]:
    def create(_: int) -> str:
        first, second = new_numbers()
        body = {"first_party": first, "second_party": second}
        response = api.post("/v1/sessions", json=body)
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(create, range(count)))


def _all_settled(api: httpx2.Client, ids: list[str]) -> list[dict[str, Any]]:
    sessions = [api.get(f"/v1/sessions/{i}").json() for i in ids]
    return sessions if all(s["status"] != "pending" for s in sessions) else []


def _vts_pairs(sandbox: httpx2.Client) -> Counter[tuple[str, str]]:
    sessions = sandbox.get("/_sandbox/sessions").json()["sessions"]
    return Counter((s["first_party"], s["second_party"]) for s in sessions)


def _assert_one_vts_session_each(sandbox: httpx2.Client, sessions: list[dict[str, Any]]) -> None:
    pairs = _vts_pairs(sandbox)
    assert all(s["status"] == "active" for s in sessions), [s["error"] for s in sessions]
    assert len(pairs) == len(sessions)
    assert set(pairs.values()) == {1}
    assert {(s["first_party"], s["second_party"]) for s in sessions} == set(pairs)
    assert len({s["vts_session_uuid"] for s in sessions}) == len(sessions)


def _created_once_despite(
    api: httpx2.Client, sandbox: httpx2.Client, faults: dict[str, Any], count: int
) -> list[str]:
    """Create ``count`` sessions while VTS has ``faults``; check each exists at VTS once."""
    sandbox.put("/_sandbox/faults", json=faults)
    ids = _create_many(api, count)
    sessions = wait_until(lambda: _all_settled(api, ids), timeout=60, interval=0.2)
    _assert_one_vts_session_each(sandbox, sessions)
    return ids


def test_30_percent_503s_create_every_session_exactly_once(
    api: httpx2.Client, sandbox: httpx2.Client, worker: dramatiq.Worker
) -> None:
    """With 30% of VTS requests failing 503, every session is created, once."""
    faults = {"error_rate": 0.3, "error_status": 503, "seed": 7}
    _created_once_despite(api, sandbox, faults, 20)
    assert sandbox.get("/_sandbox/stats").json()["faults"]["error"] > 0


@pytest.fixture
def settings(redis_url: str, sandbox_url: str, web_port: int) -> Settings:
    return make_settings(
        redis_url, sandbox_url, vts_timeout=0.5, public_base_url=f"http://127.0.0.1:{web_port}"
    )


def test_create_that_stalls_past_the_timeout_is_adopted_not_repeated(
    api: httpx2.Client, sandbox: httpx2.Client, worker: dramatiq.Worker
) -> None:
    """VTS creates, then stalls past our timeout: the retry finds and adopts that session."""
    faults = {"stall_after_create": 2, "stall_rate": 0.5, "seed": 3}
    ids = _created_once_despite(api, sandbox, faults, 20)
    events = [api.get(f"/v1/sessions/{i}/events").json()["data"] for i in ids]
    adopted = [e for timeline in events for e in timeline if e.get("adopted")]
    assert adopted, "some creates should have stalled and been adopted"


def test_429_with_retry_after_is_retried_and_succeeds(
    api: httpx2.Client, sandbox: httpx2.Client, worker: dramatiq.Worker
) -> None:
    """Injected 429s are retried after Retry-After; each session is created once."""
    _created_once_despite(api, sandbox, {"rate_429": 0.5, "retry_after": 1, "seed": 11}, 10)
