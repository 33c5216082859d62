"""A worker process SIGKILLed in the middle of a download: no partial file is ever served
or left, and the download completes once a worker runs again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit.sandbox.server import create_sandbox_app
from tests.conftest import new_numbers, sandbox_with, wait_until
from tests.servers import serve
from tests.system import System

pytestmark = pytest.mark.slow


@pytest.fixture
def system(redis_url: str, tmp_path: Path) -> Iterator[System]:
    with serve(create_sandbox_app(sandbox_with())) as sandbox_url:
        env = {
            "RECORDINGS_DIR": str(tmp_path / "recordings"),
            "EGRESS_ALLOW_HTTP": "true",
            "EGRESS_ALLOW_PRIVATE": "true",
        }
        system = System(redis_url, sandbox_url, tmp_path, extra_env=env).start()
        try:
            yield system
        finally:
            system.stop()


def test_killed_mid_download_leaves_nothing_partial_and_completes(
    system: System, tmp_path: Path
) -> None:
    """Kill the worker while the audio trickles in; restart; the file arrives whole."""
    directory = tmp_path / "recordings"
    system.sandbox.put("/_sandbox/faults", json={"recording_trickle_bytes_per_second": 40_000})
    first, second = new_numbers()
    session = system.api.post(
        "/v1/sessions",
        json={"first_party": first, "second_party": second, "record": True,
              "record_file_format": "wav"},
        headers={"Prefer": "wait=20"},
    ).json()  # fmt: skip
    placed = system.sandbox.post(
        f"/_sandbox/sessions/{session['vts_session_uuid']}/calls",
        json={"caller": "first", "duration": 12},
    ).json()
    wait_until(lambda: list(directory.glob(".upload-*")), timeout=20, interval=0.05)
    system.kill("worker")
    assert not list(directory.glob("rec_*")), "a partial file is visible under its name"
    system.sandbox.delete("/_sandbox/faults")
    system.restart("worker")

    def stored() -> list[dict[str, str]]:
        recordings = system.api.get(f"/v1/sessions/{session['id']}").json()["recordings"]
        return [r for r in recordings if r["status"] == "stored"]

    [recording] = wait_until(stored, timeout=60, interval=0.5)
    truth = system.sandbox.get(f"/_sandbox/recordings/{placed['recording_uuid']}").json()
    assert recording["sha256"] == truth["sha256"]
    assert not list(directory.glob(".upload-*"))
