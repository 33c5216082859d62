"""The Procfile's ``web`` and ``worker`` as real processes, against the sandbox on loopback:
sessions are created, the VTS rate limit holds across worker processes, and nothing the
processes print contains a phone number in full."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest

from service.vts.sandbox import create_sandbox_app
from tests.conftest import API_KEY, AUTH_ID, AUTH_TOKEN, new_numbers, sandbox_with, wait_until
from tests.servers import free_port, serve

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class System:
    api: httpx2.Client
    sandbox: httpx2.Client
    logs: list[Path]
    numbers: list[str]

    def output(self) -> str:
        return "".join(path.read_text(errors="replace") for path in self.logs)


def _procfile() -> dict[str, list[str]]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    entries = (line.partition(": ") for line in lines)
    return {name: shlex.split(command) for name, _, command in entries}


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    # The console script lives next to the interpreter running the tests.
    executable = Path(sys.executable).parent / command[0]
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(executable), *command[1:]], env=env, stdout=out, stderr=subprocess.STDOUT
        )


@pytest.fixture(scope="module")
def system(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    directory = tmp_path_factory.mktemp("processes")
    port = free_port()
    with serve(create_sandbox_app(sandbox_with())) as sandbox_url:
        env = {
            **os.environ,
            "REDIS_URL": redis_url,
            "VTS_BASE_URL": sandbox_url,
            "VTS_AUTH_ID": AUTH_ID,
            "VTS_AUTH_TOKEN": AUTH_TOKEN,
            "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
            "API_KEYS": API_KEY,
            "PORT": str(port),
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "INFO",
        }
        logs = [directory / "web.log", directory / "worker.log"]
        procs = [
            _start(_procfile()[name], env, log)
            for name, log in zip(["web", "worker"], logs, strict=True)
        ]
        api = httpx2.Client(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=40,
        )
        sandbox = httpx2.Client(base_url=sandbox_url, auth=(AUTH_ID, AUTH_TOKEN), timeout=10)
        try:
            wait_until(lambda: _ready(api), timeout=30, interval=0.1)
            yield System(api, sandbox, logs, [])
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(40)
            api.close()
            sandbox.close()


def _ready(api: httpx2.Client) -> bool:
    try:
        return api.get("/readyz").status_code == 200
    except httpx2.TransportError:
        return False


def _create(system: System, wait: int = 0) -> httpx2.Response:
    first, second = new_numbers()
    system.numbers += [first, second]
    headers = {"Prefer": f"wait={wait}"} if wait else {}
    body = {"first_party": first, "second_party": second}
    return system.api.post("/v1/sessions", json=body, headers=headers)


def test_procfile_processes_create_a_session(system: System) -> None:
    """The web and worker of the Procfile, as processes, make a session active."""
    response = _create(system, wait=20)
    assert response.status_code == 201, response.text
    assert response.json()["virtual_number"].startswith("+1415")


def test_two_worker_processes_stay_under_the_vts_rate_limit(system: System) -> None:
    """500 creates through 2 worker processes: never over 300 per 5 s, zero 429s."""
    system.sandbox.post("/_sandbox/reset")
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda _: _create(system), range(500)))
    assert {r.status_code for r in responses} == {202}
    ids = [r.json()["id"] for r in responses]

    def all_active() -> bool:
        page = system.api.get("/v1/sessions", params={"status": "active", "limit": "100"})
        listed = page.json()["data"]
        return len(listed) == 100 and _count_active(system, ids) == len(ids)

    wait_until(all_active, timeout=90, interval=0.5)
    stats = system.sandbox.get("/_sandbox/stats").json()
    assert stats["rate_limited"] == 0
    assert stats["max_in_window"] <= 300
    assert stats["sessions_created"] == 500


def _count_active(system: System, ids: list[str]) -> int:
    statuses = [system.api.get(f"/v1/sessions/{i}").json()["status"] for i in ids[-50:]]
    if any(s != "active" for s in statuses):
        return 0
    return sum(system.api.get(f"/v1/sessions/{i}").json()["status"] == "active" for i in ids)


def test_no_phone_number_in_anything_the_processes_printed(system: System) -> None:
    """Every line the processes printed is JSON, and no number used appears in full."""
    _create(system, wait=10)
    output = system.output()
    assert output.strip()
    for number in system.numbers:
        assert number not in output
        assert number.lstrip("+") not in output
        assert number[2:] not in output  # without the country code either


def test_every_line_printed_is_json_with_correlation_ids(system: System) -> None:
    """Web and worker print only JSON lines; a worker line carries the request's id."""
    import json

    response = _create(system, wait=10)
    request_id = response.headers["x-request-id"]
    lines = [line for line in system.output().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]
    assert all({"timestamp", "level", "event"} <= r.keys() for r in records)
    worker_lines = [r for r in records if r.get("request_id") == request_id and "actor" in r]
    assert {r["event"] for r in worker_lines} >= {"session_created", "message_processed"}
    assert all(r["message_id"] and r["session_id"] for r in worker_lines)
