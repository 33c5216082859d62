"""Recordings end to end: the sandbox records a call and serves the audio; the worker
stores it (exactly once, atomically, only from allowed hosts); the API serves it back."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import dramatiq
import httpx2
import pytest

from service.settings import Settings
from tests.conftest import loopback_settings, new_numbers, wait_until


@pytest.fixture
def settings(redis_url: str, sandbox_url: str, web_port: int, recordings_dir: Path) -> Settings:
    return loopback_settings(redis_url, sandbox_url, web_port, recordings_dir=recordings_dir)


def _recorded_call(
    api: httpx2.Client, sandbox: httpx2.Client, fmt: str = "wav", duration: int = 12
) -> tuple[dict[str, Any], str]:
    first, second = new_numbers()
    body = {"first_party": first, "second_party": second, "record": True,
            "record_file_format": fmt}  # fmt: skip
    session = api.post("/v1/sessions", json=body, headers={"Prefer": "wait=20"}).json()
    assert session["status"] == "active", session
    placed = sandbox.post(
        f"/_sandbox/sessions/{session['vts_session_uuid']}/calls",
        json={"caller": "first", "duration": duration},
    )
    assert placed.status_code == 202, placed.text
    return session, placed.json()["recording_uuid"]


def _recording(api: httpx2.Client, session_id: str, status: str = "stored") -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        recordings = api.get(f"/v1/sessions/{session_id}").json()["recordings"]
        done = [r for r in recordings if r["status"] == status]
        return done[0] if done else None

    result: dict[str, Any] = wait_until(found, timeout=30, interval=0.1)
    return result


def _no_partial_files(directory: Path) -> bool:
    return not [p for p in directory.glob(".*") if p.is_file()]


@pytest.mark.parametrize("fmt", ["wav", "mp3"])
def test_recorded_call_is_stored_and_served_byte_identical(
    api: httpx2.Client, sandbox: httpx2.Client, worker: dramatiq.Worker, fmt: str
) -> None:
    """The stored file's sha256 equals the sandbox's, and the API serves the same bytes."""
    session, uuid = _recorded_call(api, sandbox, fmt)
    recording = _recording(api, session["id"])
    truth = sandbox.get(f"/_sandbox/recordings/{uuid}").json()
    assert (recording["sha256"], recording["size"]) == (truth["sha256"], truth["size"])
    assert recording["format"] == fmt
    served = api.get(recording["url"])
    assert served.status_code == 200
    assert hashlib.sha256(served.content).hexdigest() == truth["sha256"]
    assert served.headers["etag"] == f'"{truth["sha256"]}"'
    assert served.headers["content-type"] == ("audio/wav" if fmt == "wav" else "audio/mpeg")


def test_ranges_are_served(
    api: httpx2.Client, sandbox: httpx2.Client, worker: dramatiq.Worker
) -> None:
    """Byte ranges come back as 206 with the right bytes; a range past the end is 416."""
    session, _ = _recorded_call(api, sandbox)
    recording = _recording(api, session["id"])
    whole = api.get(recording["url"]).content
    for header, expected in [("bytes=0-99", whole[:100]), ("bytes=100-", whole[100:]),
                             ("bytes=-50", whole[-50:])]:  # fmt: skip
        part = api.get(recording["url"], headers={"Range": header})
        assert part.status_code == 206
        assert part.content == expected
        assert part.headers["content-range"].endswith(f"/{len(whole)}")
    assert api.get(recording["url"], headers={"Range": f"bytes={len(whole)}-"}).status_code == 416
    etag = {"If-None-Match": f'"{recording["sha256"]}"'}
    assert api.get(recording["url"], headers=etag).status_code == 304


def test_unknown_or_pending_recordings_are_404(api: httpx2.Client) -> None:
    """Ids that are malformed or not stored are 404."""
    for rec_id in ["rec_" + "0" * 32, "nope", "rec_../../etc/passwd"]:
        assert api.get(f"/v1/recordings/{rec_id}").status_code == 404


def test_recording_not_ready_at_first_is_fetched_once_ready(
    api: httpx2.Client, sandbox: httpx2.Client, worker: dramatiq.Worker
) -> None:
    """VTS answers 404 for a few seconds after the event: the download waits, then works."""
    sandbox.put("/_sandbox/faults", json={"recording_404_seconds": 3})
    session, _ = _recorded_call(api, sandbox)
    _recording(api, session["id"])
    media = sandbox.get("/_sandbox/stats").json()["media"]
    assert media["not_found"] >= 1
    assert media["served"] == 1


def test_a_cut_connection_is_retried_and_leaves_no_partial_file(
    api: httpx2.Client, sandbox: httpx2.Client, worker: dramatiq.Worker, recordings_dir: Path
) -> None:
    """Half a body then a dropped connection: retried, stored whole, no partial file."""
    sandbox.put("/_sandbox/faults", json={"recording_cut_rate": 0.5, "seed": 2})
    sessions = [_recorded_call(api, sandbox)[0] for _ in range(4)]
    for session in sessions:
        _recording(api, session["id"])
    assert sandbox.get("/_sandbox/stats").json()["media"]["served"] > 4
    assert _no_partial_files(recordings_dir)


def test_wrong_length_fails_nothing_silently(
    api: httpx2.Client, sandbox: httpx2.Client, worker: dramatiq.Worker, recordings_dir: Path
) -> None:
    """A short body under a longer Content-Length is never stored as if complete."""
    sandbox.put("/_sandbox/faults", json={"recording_wrong_length": 1000})
    session, _ = _recorded_call(api, sandbox)
    wait_until(lambda: sandbox.get("/_sandbox/stats").json()["media"].get("served", 0) >= 1)
    sandbox.delete("/_sandbox/faults")
    recording = _recording(api, session["id"])
    truth_sha = api.get(recording["url"]).content
    assert hashlib.sha256(truth_sha).hexdigest() == recording["sha256"]
    assert _no_partial_files(recordings_dir)


@pytest.mark.parametrize(
    "target",
    ["http://127.0.0.1:6379/", "http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/x",
     "https://evil.example/x.wav"],
)  # fmt: skip
def test_redirects_elsewhere_are_refused(
    redis_url: str,
    sandbox_url: str,
    web_port: int,
    recordings_dir: Path,
    api: httpx2.Client,
    sandbox: httpx2.Client,
    worker: dramatiq.Worker,
    target: str,
) -> None:
    """A redirect to another host (Redis, metadata, private, unknown) fails the recording."""
    sandbox.put("/_sandbox/faults", json={"recording_redirect_to": target})
    session, _ = _recorded_call(api, sandbox)
    failed = _recording(api, session["id"], status="failed")
    assert failed["url"] is None
    assert _no_partial_files(recordings_dir)
    assert not list(recordings_dir.glob("rec_*"))


def test_duplicate_completed_events_download_once(
    api: httpx2.Client, sandbox: httpx2.Client, worker: dramatiq.Worker
) -> None:
    """With every callback delivered twice, each recording is fetched once."""
    sandbox.put("/_sandbox/faults", json={"callback_duplicate_rate": 1.0})
    session, _ = _recorded_call(api, sandbox)
    _recording(api, session["id"])
    sandbox.post("/_sandbox/drain")
    assert sandbox.get("/_sandbox/stats").json()["media"]["served"] == 1


def test_recording_failed_event_marks_it_failed(
    api: httpx2.Client, sandbox: httpx2.Client, worker: dramatiq.Worker
) -> None:
    """SessionRecordingFailed leaves a failed recording with a reason."""
    first, second = new_numbers()
    body = {"first_party": first, "second_party": second, "record": True}
    session = api.post("/v1/sessions", json=body, headers={"Prefer": "wait=20"}).json()
    sandbox.post(
        f"/_sandbox/sessions/{session['vts_session_uuid']}/calls",
        json={"caller": "first", "recording_fails": True},
    )
    failed = _recording(api, session["id"], status="failed")
    assert failed["url"] is None
