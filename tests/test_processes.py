"""The Procfile's ``web`` and ``worker`` as real processes, against the sandbox on loopback:
sessions are created, the VTS rate limit holds across worker processes, and nothing the
processes print contains a phone number in full."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2
import pytest
import redis

from devkit.sandbox.server import create_sandbox_app
from service import messages
from service.store import Queue
from service.store.keys import Keys
from tests.conftest import new_numbers, sandbox_with, wait_until
from tests.servers import serve
from tests.system import System

pytestmark = pytest.mark.slow


# VTS's limit scaled down (the rule does not depend on its scale), so that a few hundred
# creates cross several windows in seconds.
RATE_LIMIT, RATE_WINDOW = 60, 1.0
CREATES = 200


@pytest.fixture(scope="module")
def system(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    config = sandbox_with(rate_limit=RATE_LIMIT, rate_window=RATE_WINDOW)
    # What is tested is the workers' shared VTS limit, so the web's per-app share of the
    # budget is lifted out of the way.
    limits = {"VTS_RATE_LIMIT": str(RATE_LIMIT), "VTS_RATE_WINDOW": str(RATE_WINDOW),
              "VTS_APP_BUDGET": "1000000"}  # fmt: skip
    with serve(create_sandbox_app(config)) as sandbox_url:
        directory = tmp_path_factory.mktemp("processes")
        system = System(redis_url, sandbox_url, directory, extra_env=limits).start()
        try:
            yield system
        finally:
            system.stop()


def _create(system: System, wait: int = 0) -> httpx2.Response:
    first, second = new_numbers()
    if not wait:
        return system.create(first, second)
    system.numbers += [first, second]
    body = {"first_party": first, "second_party": second}
    return system.api.post("/v1/sessions", json=body, headers={"Prefer": f"wait={wait}"})


def test_procfile_processes_create_a_session(system: System) -> None:
    """The web and worker of the Procfile, as processes, make a session active."""
    response = _create(system, wait=20)
    assert response.status_code == 201, response.text
    assert response.json()["virtual_number"].startswith("+1415")


def test_two_worker_processes_stay_under_the_vts_rate_limit(system: System) -> None:
    """200 creates through 2 worker processes: never over VTS's limit in any window (60
    per second here), zero 429s."""
    system.sandbox.post("/_sandbox/reset")
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda _: _create(system), range(CREATES)))
    assert {r.status_code for r in responses} == {202}
    ids = [r.json()["id"] for r in responses]

    def all_active() -> bool:
        page = system.api.get("/v1/sessions", params={"status": "active", "limit": "100"})
        listed = page.json()["data"]
        return len(listed) == 100 and _count_active(system, ids) == len(ids)

    wait_until(all_active, timeout=90, interval=0.5)
    stats = system.sandbox.get("/_sandbox/stats").json()
    assert stats["rate_limited"] == 0
    assert stats["max_in_window"] <= RATE_LIMIT
    assert stats["sessions_created"] == CREATES


def _count_active(system: System, ids: list[str]) -> int:
    statuses = [system.api.get(f"/v1/sessions/{i}").json()["status"] for i in ids[-50:]]
    if any(s != "active" for s in statuses):
        return 0
    return sum(system.api.get(f"/v1/sessions/{i}").json()["status"] == "active" for i in ids)


def _force_a_failure_quoting_a_number(system: System, redis_url: str) -> str:
    """An event whose stored record was damaged so that processing it raises an exception
    whose message quotes a phone number (int() of a formatted number as the time it was
    received, read while its VTS session is not known)."""
    number = "+1 415 555 2671"
    system.numbers.append("+14155552671")
    params = {"EventName": "SessionFirstPartyHangup", "SessionUUID": "unknown-vts-session",
              "SequenceNumber": "1"}  # fmt: skip
    client = redis.Redis.from_url(redis_url)
    event_id = "f" * 32
    record = {"kind": "session", "params": json.dumps(params), "received_ms": number}
    client.hset(Keys.webhook(event_id), mapping=record)  # type: ignore[arg-type]
    message = messages.APPLY_EVENT.message(messages.EventRef(event_id))
    Queue(client).enqueue(message)
    client.close()
    return message.message_id


def test_no_phone_number_in_anything_the_processes_printed(system: System, redis_url: str) -> None:
    """No number used appears in full in anything the processes printed, even in the
    traceback of an exception whose message quoted one."""
    message_id = _force_a_failure_quoting_a_number(system, redis_url)
    mentioned = re.compile(rf'"message_id": ?"{re.escape(message_id)}"')
    wait_until(lambda: mentioned.search(system.output()) is not None, timeout=30)
    wait_until(lambda: "Traceback" in system.output(), timeout=30)
    output = system.output()
    assert output.strip()
    for number in system.numbers:
        assert number not in output
        assert number.lstrip("+") not in output
        assert number[2:] not in output  # without the country code either


def test_every_line_printed_is_json_with_correlation_ids(system: System) -> None:
    """Web and worker print only JSON lines; a worker line carries the request's id."""
    response = _create(system, wait=10)
    request_id = response.headers["x-request-id"]

    def records() -> list[dict[str, Any]]:
        lines = [line for line in system.output().splitlines() if line.strip()]
        return [json.loads(line) for line in lines]

    def worker_events() -> set[str]:
        return {r["event"] for r in records() if r.get("request_id") == request_id and "actor" in r}

    # The answer comes when the session is active; the message's own last line follows.
    wait_until(lambda: "message_processed" in worker_events(), timeout=10)
    assert all({"timestamp", "level", "event"} <= r.keys() for r in records())
    assert worker_events() >= {"session_created", "message_processed"}
    worker_lines = [r for r in records() if r.get("request_id") == request_id and "actor" in r]
    assert all(r["message_id"] and r["session_id"] for r in worker_lines)


def test_metrics_are_exposed_by_web_and_workers(system: System) -> None:
    """/metrics and /metrics/cluster (web) and the workers' endpoint carry the families
    operators alert on, labelled by route, actor, queue and outcome, never by session or number."""
    response = _create(system, wait=10)
    session = response.json()
    system.sandbox.post(
        f"/_sandbox/sessions/{session['vts_session_uuid']}/calls", json={"caller": "first"}
    )
    admin = f"http://127.0.0.1:{system.admin_port}"
    cluster = wait_until(
        lambda: _text_if(httpx2.get(admin + "/metrics/cluster"), "masking_webhooks_total"),
        timeout=10,
    )
    for family in ("masking_queue_depth", "masking_queue_oldest_age_seconds",
                   "masking_dead_letters", "masking_webhooks_total",
                   "masking_events_total"):  # fmt: skip
        assert family in cluster, family
    web = httpx2.get(admin + "/metrics").text
    for family in ("masking_http_requests_total", "masking_http_request_seconds_bucket"):
        assert family in web, family
    assert 'route="/v1/sessions"' in web
    worker_url = f"http://127.0.0.1:{system.metrics_port}/metrics"
    worker = wait_until(lambda: _text_if(httpx2.get(worker_url), 'actor="apply_event"'), timeout=10)
    for family in ("masking_messages_total", "masking_message_seconds_bucket",
                   "masking_vts_calls_total", "masking_vts_call_seconds_bucket"):  # fmt: skip
        assert family in worker, family
    assert 'action="create_session",outcome="2xx"' in worker
    for text in (web, cluster, worker):
        assert session["id"] not in text
        assert session["first_party"][2:] not in text


def _text_if(response: httpx2.Response, needle: str) -> str | None:
    return response.text if needle in response.text else None


def test_log_cli_filters_a_captured_stream(system: System, tmp_path: Path) -> None:
    """`masking logs` on what web and workers printed: --session keeps that session's lines
    from both processes, --level keeps warnings and worse, and no number shows."""
    session = _create(system, wait=10).json()
    capture = tmp_path / "captured.log"

    def processed() -> bool:
        lines = system.output().splitlines()
        return any(session["id"] in line and "message_processed" in line for line in lines)

    wait_until(processed)
    capture.write_text(system.output())
    masking = str(Path(sys.executable).parent / "masking")

    def run(*args: str) -> str:
        done = subprocess.run([masking, "logs", str(capture), "--no-color", *args],
                              capture_output=True, text=True, timeout=30, check=True)  # fmt: skip
        return done.stdout

    mine = run("--session", session["id"]).splitlines()
    assert mine
    assert all(session["id"] in line or session["vts_session_uuid"] in line for line in mine)
    assert any("http_request" in line for line in mine)
    assert any("message_processed" in line for line in mine)
    worse = run("--level", "warning").splitlines()
    assert all(" info " not in line.lower() for line in worse)
    everything = run()
    for number in system.numbers:
        assert number not in everything
        assert number[2:] not in everything
