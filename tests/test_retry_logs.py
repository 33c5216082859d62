"""What operators see of retries: one warning line per transient failure, without a
traceback; an error with its traceback only when the work is given up."""

from __future__ import annotations

import json
from typing import Any

import dramatiq
import httpx2
import pytest

from service.settings import Settings
from tests.conftest import make_settings, new_numbers, wait_until


class Lines:
    """The JSON log lines written so far (pytest captures the worker threads' stderr)."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self._capsys = capsys
        self.seen: list[dict[str, Any]] = []

    def __call__(self) -> list[dict[str, Any]]:
        for line in self._capsys.readouterr().err.splitlines():
            if line.startswith("{"):
                self.seen.append(json.loads(line))
        return self.seen

    def named(self, event: str) -> list[dict[str, Any]]:
        return [line for line in self() if line.get("event") == event]


@pytest.fixture
def settings(redis_url: str, sandbox_url: str, web_port: int) -> Settings:
    return make_settings(
        redis_url,
        sandbox_url,
        create_max_retries=2,
        public_base_url=f"http://127.0.0.1:{web_port}",
    )


def _create(api: httpx2.Client) -> str:
    first, second = new_numbers()
    response = api.post("/v1/sessions", json={"first_party": first, "second_party": second})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def test_a_retried_failure_is_one_warning_without_traceback(
    api: httpx2.Client,
    sandbox: httpx2.Client,
    worker: dramatiq.Worker,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """VTS answers 503 and then recovers: a warning per attempt, no error, no traceback."""
    lines = Lines(capsys)
    sandbox.put("/_sandbox/faults", json={"error_rate": 1.0, "error_status": 503})
    session_id = _create(api)
    wait_until(lambda: lines.named("work_retrying"), timeout=30)
    sandbox.put("/_sandbox/faults", json={})
    wait_until(lambda: api.get(f"/v1/sessions/{session_id}").json()["status"] == "active",
               timeout=30)  # fmt: skip
    retried = lines.named("work_retrying")
    assert {line["level"] for line in retried} == {"warning"}
    assert all("exception" not in line for line in retried)
    assert [line for line in lines() if line["level"] in ("error", "critical")] == []
    assert not any("Retrying message" in str(line.get("event")) for line in lines())


def test_work_given_up_is_one_error_with_its_traceback(
    api: httpx2.Client,
    sandbox: httpx2.Client,
    worker: dramatiq.Worker,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Past its retries a create is given up: an error line naming the failure, with the
    traceback."""
    lines = Lines(capsys)
    sandbox.put("/_sandbox/faults", json={"error_rate": 1.0, "error_status": 503})
    session_id = _create(api)
    wait_until(lambda: api.get(f"/v1/sessions/{session_id}").json()["status"] == "failed",
               timeout=60)  # fmt: skip
    given_up = wait_until(lambda: lines.named("message_dead_lettered"), timeout=30)
    assert len(given_up) == 1
    assert given_up[0]["level"] == "error"
    assert given_up[0]["error"].startswith("VtsUnavailable")
    assert "Traceback" in given_up[0]["exception"]
    errors = [line for line in lines() if line["level"] in ("error", "critical")]
    assert errors == given_up
