"""Sessions end to end in one process: the web on loopback, a real dramatiq worker, the
VTS sandbox on loopback, real Redis."""

from __future__ import annotations

from typing import Any

import dramatiq
import httpx2
import pytest

from devkit.sandbox.server import number_range
from tests.conftest import new_numbers, sandbox_with, wait_until


def _create(api: httpx2.Client, wait: int = 10, **extra: Any) -> httpx2.Response:
    first, second = new_numbers()
    body = {"first_party": first, "second_party": second, **extra}
    return api.post("/v1/sessions", json=body, headers={"Prefer": f"wait={wait}"})


def _vts_sessions(sandbox: httpx2.Client) -> list[dict[str, Any]]:
    sessions: list[dict[str, Any]] = sandbox.get("/_sandbox/sessions").json()["sessions"]
    return sessions


def test_create_with_wait_returns_active_with_virtual_number(
    api: httpx2.Client, sandbox: httpx2.Client, worker: dramatiq.Worker
) -> None:
    """Prefer: wait answers 201 with the session active and the sandbox's virtual number."""
    response = _create(api)
    assert response.status_code == 201, response.text
    session = response.json()
    assert session["status"] == "active"
    [vts] = _vts_sessions(sandbox)
    assert session["vts_session_uuid"] == vts["session_uuid"]
    assert session["virtual_number"] == vts["virtual_number"]
    assert session["expires_at"] is not None


def test_vts_is_given_our_callback_urls(
    api: httpx2.Client, sandbox: httpx2.Client, worker: dramatiq.Worker
) -> None:
    """VTS gets our own webhook URLs, whatever the app sent."""
    _create(api, callback_url="https://app.example/notify")
    [vts] = _vts_sessions(sandbox)
    base = str(api.base_url).rstrip("/")
    assert vts["callback_url"] == f"{base}/webhooks/vts/session"
    assert vts["recording_callback_url"] == f"{base}/webhooks/vts/recording"


@pytest.mark.parametrize(
    "sandbox_config",
    [sandbox_with(dialect="envelope"), sandbox_with(dialect="bare")],
    ids=["envelope", "bare"],
    indirect=True,
)
def test_both_dialects_give_the_same_session(
    api: httpx2.Client, sandbox: httpx2.Client, worker: dramatiq.Worker
) -> None:
    """Whichever dialect VTS speaks, the session comes out active with its number."""
    session = _create(api, record=True, session_expiry=600).json()
    assert session["status"] == "active"
    assert session["virtual_number"].startswith("+")
    assert session["record"] is True


def test_update_reaches_vts(
    api: httpx2.Client, sandbox: httpx2.Client, worker: dramatiq.Worker
) -> None:
    """PATCH is applied at VTS and then shown on the session."""
    session = _create(api).json()
    response = api.patch(f"/v1/sessions/{session['id']}", json={"record": True, "ring_timeout": 30})
    assert response.status_code == 202
    wait_until(lambda: api.get(f"/v1/sessions/{session['id']}").json()["ring_timeout"] == 30)
    [vts] = _vts_sessions(sandbox)
    assert str(vts["record"]).lower() == "true"
    assert int(vts["ring_timeout"]) == 30


def test_delete_expires_at_vts(
    api: httpx2.Client, sandbox: httpx2.Client, worker: dramatiq.Worker
) -> None:
    """DELETE ends the session at VTS, then shows it expired."""
    session = _create(api).json()
    assert api.delete(f"/v1/sessions/{session['id']}").status_code == 202
    wait_until(lambda: api.get(f"/v1/sessions/{session['id']}").json()["status"] == "expired")
    [vts] = _vts_sessions(sandbox)
    assert vts["status"] == "expired"
    events = api.get(f"/v1/sessions/{session['id']}/events").json()["data"]
    assert [e["type"] for e in events] == ["requested", "created", "end_requested", "expired"]


def test_delete_while_pending_waits_for_the_create(
    api: httpx2.Client, sandbox: httpx2.Client, worker: dramatiq.Worker
) -> None:
    """Ending a session whose create is still running expires it once created."""
    sandbox.put("/_sandbox/faults", json={"latency_ms": 300, "error_paths": ["create"]})
    session = _create(api, wait=0).json()
    api.delete(f"/v1/sessions/{session['id']}")
    wait_until(
        lambda: api.get(f"/v1/sessions/{session['id']}").json()["status"] == "expired",
        timeout=20,
    )
    assert [s["status"] for s in _vts_sessions(sandbox)] == ["expired"]


def test_rejection_marks_the_session_failed_with_reason(
    api: httpx2.Client, sandbox: httpx2.Client, worker: dramatiq.Worker
) -> None:
    """A 4xx from VTS (no virtual number left) fails the session with VTS's reason."""
    sandbox.put("/_sandbox/faults", json={"error_rate": 1.0, "error_status": 400})
    response = _create(api)
    session = response.json()
    assert session["status"] == "failed", session
    assert session["error"]["code"] == "vts_rejected"
    assert session["error"]["message"]
    assert session["first_party"][2:] not in session["error"]["message"]


@pytest.mark.parametrize(
    "sandbox_config", [sandbox_with(number_pool=number_range(2))], indirect=True
)
def test_pool_exhaustion_leaves_the_session_pending(
    api: httpx2.Client, worker: dramatiq.Worker
) -> None:
    """When the sandbox's pool is empty the session stays pending (VTS is asked again
    until a number is free: see test_live_sessions), it does not fail."""
    sessions = [_create(api, wait=wait).json() for wait in (10, 10, 1)]
    assert [s["status"] for s in sessions] == ["active", "active", "pending"]
