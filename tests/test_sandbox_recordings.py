"""Recordings in the VTS sandbox: their signed events, their media, and the media faults."""

from __future__ import annotations

import hashlib
import io
import time
import tracemalloc
import wave
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from service.vts.signatures import verify_v3
from tests.servers import serve
from tests.test_sandbox import AUTH, BASE, Clock, sandboxes
from tests.test_sandbox_calls import Receiver, Start, deliveries, drain, new_session, simulate

HOOK = "/hooks/recording/?tenant=t-1"
MP3_HEADER = bytes.fromhex("FFFB18C0")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    with serve(receiver.app()) as url:
        receiver.url = url
        yield receiver


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def start(clock: Clock) -> Iterator[Start]:
    with sandboxes(clock, timeout=20) as start:
        yield start


@pytest.fixture
def client(start: Start) -> httpx2.Client:
    return start()


def recorded_session(client: httpx2.Client, receiver: Receiver, **fields: object) -> str:
    hook = receiver.url + HOOK
    return new_session(client, receiver, record=True, recording_callback_url=hook, **fields)


def recording_requests(receiver: Receiver) -> list[Any]:
    return [r for r in receiver.requests if r.path == "/hooks/recording/"]


def call(client: httpx2.Client, session_uuid: str, **body: object) -> dict[str, Any]:
    """Place a bridged call, wait for its callbacks, and return the recording's listing."""
    answer = simulate(client, session_uuid, caller="first", **body)
    drain(client)
    listing: dict[str, Any] = client.get(f"/_sandbox/recordings/{answer['recording_uuid']}").json()
    return listing


def standalone(client: httpx2.Client, **body: object) -> dict[str, Any]:
    response = client.post("/_sandbox/recordings", json=body)
    assert response.status_code == 201, response.text
    listing: dict[str, Any] = response.json()
    return listing


def faults(client: httpx2.Client, **settings: object) -> None:
    response = client.put("/_sandbox/faults", json=settings)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_recorded_call_sends_initiated_then_completed_signed(
    client: httpx2.Client, receiver: Receiver, method: str
) -> None:
    """A recorded call sends Initiated then Completed, signed against the recording URL."""
    uuid = recorded_session(client, receiver, recording_callback_method=method)
    listing = call(client, uuid, duration=61, ring_seconds=5)
    received = recording_requests(receiver)
    initiated, completed = (r.event for r in received)
    for request in received:
        nonce = request.headers["x-vts-signature-v3-nonce"]
        signature = request.headers["x-vts-signature-v3"]
        assert request.method == method
        assert verify_v3(receiver.url + HOOK, request.event, nonce, signature, AUTH[1], method)
    base = f"{client.base_url}/v1/Account/{AUTH[0]}/Recording/{listing['recording_uuid']}"
    assert initiated == {
        "EventName": "SessionRecordingInitiated",
        "EventTimestamp": "2024-01-03 13:35:05",
        "SessionUUID": uuid,
        "FirstParty": "14155552345",
        "SecondParty": "12165554567",
        "VirtualNumber": "14152000000",
        "RecordingUUID": listing["recording_uuid"],
        "RecordingFormat": "mp3",
        "RecordingStartTime": "2024-01-03 13:35:05",
        "SequenceNumber": "1",
    }
    assert completed == initiated | {
        "EventName": "SessionRecordingCompleted",
        "EventTimestamp": "2024-01-03 13:36:06",
        "RecordingEndTime": "2024-01-03 13:36:06",
        "RecordingDuration": "61",
        "RecordingURL": base + ".mp3",
        "RecordingResourceURL": base + "/",
        "SequenceNumber": "2",
    }
    assert (listing["url"], listing["session_uuid"], listing["status"]) == (
        base + ".mp3",
        uuid,
        "completed",
    )


def test_interaction_records_the_recording(client: httpx2.Client, receiver: Receiver) -> None:
    """The call's interaction record names the recording's resource URL."""
    uuid = recorded_session(client, receiver)
    listing = call(client, uuid)
    simulate(client, uuid, caller="first", recorded=False)
    records = client.get(f"{BASE}/{uuid}").json()["response"]["interaction"]
    assert [r["recording_resource_url"] for r in records] == [listing["resource_url"], None]


def test_recording_events_have_their_own_sequence(
    client: httpx2.Client, receiver: Receiver
) -> None:
    """Recording events count from 1 per session on their own channel."""
    uuid = recorded_session(client, receiver)
    call(client, uuid)
    call(client, uuid)
    numbers = [r.event["SequenceNumber"] for r in recording_requests(receiver)]
    assert numbers == ["1", "2", "3", "4"]
    channels = [(d["channel"], d["sequence_number"]) for d in deliveries(client)]
    assert [n for channel, n in channels if channel == "recording"] == [1, 2, 3, 4]
    assert [n for channel, n in channels if channel == "session"] == list(range(1, 13))
    assert client.get("/_sandbox/stats").json()["callbacks"]["recording_events"] == 4


def test_no_recording_callback_url_still_records(client: httpx2.Client, receiver: Receiver) -> None:
    """Without a recording_callback_url the recording exists but nothing is sent about it."""
    uuid = new_session(client, receiver, record=True)
    listing = call(client, uuid)
    assert recording_requests(receiver) == []
    assert client.get(listing["url"]).status_code == 200


def test_failed_recording_sends_failed_and_has_no_media(
    client: httpx2.Client, receiver: Receiver
) -> None:
    """recording_fails sends Failed (no media fields) and its media is never there."""
    uuid = recorded_session(client, receiver)
    listing = call(client, uuid, recording_fails=True)
    initiated, failed = (r.event for r in recording_requests(receiver))
    assert (initiated["EventName"], failed["EventName"]) == (
        "SessionRecordingInitiated",
        "SessionRecordingFailed",
    )
    assert {"RecordingURL", "RecordingResourceURL", "RecordingDuration"}.isdisjoint(failed)
    assert failed["RecordingEndTime"] == "2024-01-03 13:35:30"
    assert listing["status"] == "failed"
    assert client.get(listing["url"]).status_code == 404
    session = client.get(f"{BASE}/{uuid}").json()["response"]
    assert session["interaction"][0]["recording_resource_url"] is None


def test_media_needs_the_account_credentials(client: httpx2.Client, receiver: Receiver) -> None:
    """Media is 401 without the account's Basic auth, 200 with it."""
    listing = call(client, recorded_session(client, receiver))
    for auth in (None, (AUTH[0], "wrong")):
        assert httpx2.get(listing["url"], auth=auth).status_code == 401
    response = client.get(listing["url"])
    assert response.status_code == 200
    assert response.headers["content-type"] == "audio/mpeg"
    assert int(response.headers["content-length"]) == len(response.content) == listing["size"]
    assert hashlib.sha256(response.content).hexdigest() == listing["sha256"]


def test_wav_is_a_valid_file_of_the_call_length(client: httpx2.Client, receiver: Receiver) -> None:
    """A WAV recording parses with wave: 8 kHz mono 16-bit, as long as the bridge."""
    listing = call(client, recorded_session(client, receiver, record_file_format="wav"), duration=7)
    response = client.get(listing["url"])
    assert response.headers["content-type"] == "audio/wav"
    assert listing["url"].endswith(".wav")
    with wave.open(io.BytesIO(response.content)) as audio:
        params = (audio.getnchannels(), audio.getsampwidth(), audio.getframerate())
        assert params == (1, 2, 8000)
        assert audio.getnframes() / audio.getframerate() == 7 == listing["duration"]
        assert any(audio.readframes(100))  # a tone, not silence
    assert len(response.content) == 44 + 7 * 16000 == listing["size"]
    assert hashlib.sha256(response.content).hexdigest() == listing["sha256"]


def test_mp3_is_a_run_of_well_formed_frames(client: httpx2.Client, receiver: Receiver) -> None:
    """An MP3 recording is 144-byte MPEG-1 Layer III frames whose count gives the duration."""
    listing = call(client, recorded_session(client, receiver), duration=30)
    body = client.get(listing["url"]).content
    frames = [body[i : i + 144] for i in range(0, len(body), 144)]
    assert all(frame[:4] == MP3_HEADER and len(frame) == 144 for frame in frames)
    duration = len(frames) * 1152 / 32000
    assert abs(duration - 30) <= 0.018
    assert duration == listing["duration"]
    assert hashlib.sha256(body).hexdigest() == listing["sha256"]


def test_head_answers_the_headers_alone(client: httpx2.Client, receiver: Receiver) -> None:
    """HEAD gives the type and the full length, and no body."""
    listing = call(client, recorded_session(client, receiver))
    response = client.head(listing["url"])
    assert response.status_code == 200
    assert response.headers["content-length"] == str(listing["size"])
    assert response.headers["content-type"] == "audio/mpeg"
    assert response.content == b""


def test_resource_describes_the_recording(client: httpx2.Client, receiver: Receiver) -> None:
    """The resource URL answers the recording in Plivo's shape."""
    listing = call(client, recorded_session(client, receiver), duration=10)
    body = client.get(listing["resource_url"]).json()
    assert (body["recording_id"], body["recording_url"]) == (
        listing["recording_uuid"],
        listing["url"],
    )
    assert body["recording_duration_ms"] == round(listing["duration"] * 1000)


def test_404_fault_lasts_its_seconds(
    client: httpx2.Client, receiver: Receiver, clock: Clock
) -> None:
    """recording_404_seconds answers 404 until that much sandbox time has passed."""
    faults(client, recording_404_seconds=30)
    listing = call(client, recorded_session(client, receiver))
    assert client.get(listing["url"]).status_code == 404
    assert client.head(listing["url"]).status_code == 404
    clock.advance(29)
    assert client.get(listing["url"]).status_code == 404
    clock.advance(1)
    assert client.get(listing["url"]).status_code == 200


def test_error_fault_answers_its_status(client: httpx2.Client, receiver: Receiver) -> None:
    """recording_error_rate 1 answers recording_error_status to every media request."""
    faults(client, recording_error_rate=1, recording_error_status=502)
    listing = call(client, recorded_session(client, receiver))
    assert client.get(listing["url"]).status_code == 502
    assert client.get("/_sandbox/stats").json()["media"]["error"] == 1


def read_until_broken(client: httpx2.Client, url: str) -> tuple[int, int]:
    """(declared length, bytes received) of a download that must end in a protocol error."""
    sizes: list[int] = []
    with client.stream("GET", url) as response:
        declared = int(response.headers["content-length"])
        with pytest.raises(httpx2.RemoteProtocolError):
            sizes.extend(map(len, response.iter_bytes()))
    return declared, sum(sizes)


def test_cut_fault_drops_the_line_mid_body(client: httpx2.Client, receiver: Receiver) -> None:
    """recording_cut_rate 1 declares the whole length, sends half and closes the connection."""
    faults(client, recording_cut_rate=1)
    listing = call(client, recorded_session(client, receiver, record_file_format="wav"))
    declared, received = read_until_broken(client, listing["url"])
    assert (declared, received) == (listing["size"], listing["size"] // 2)


def test_wrong_length_larger_truncates_the_response(
    client: httpx2.Client, receiver: Receiver
) -> None:
    """A positive recording_wrong_length declares more than is sent: a truncated response."""
    faults(client, recording_wrong_length=1000)
    listing = call(client, recorded_session(client, receiver))
    assert read_until_broken(client, listing["url"]) == (listing["size"] + 1000, listing["size"])


def test_wrong_length_smaller_sends_a_short_file(client: httpx2.Client, receiver: Receiver) -> None:
    """A negative recording_wrong_length sends a complete response holding a short file."""
    faults(client, recording_wrong_length=-1000)
    listing = call(client, recorded_session(client, receiver))
    response = client.get(listing["url"])
    assert response.status_code == 200
    assert len(response.content) == listing["size"] - 1000
    assert hashlib.sha256(response.content).hexdigest() != listing["sha256"]


def test_trickle_fault_slows_the_body(client: httpx2.Client) -> None:
    """recording_trickle_bytes_per_second sends the body at about that rate, intact."""
    listing = standalone(client, format="mp3", size_bytes=2000)  # 13 frames: 1872 bytes
    faults(client, recording_trickle_bytes_per_second=2000)
    began = time.monotonic()
    body = client.get(listing["url"]).content
    assert time.monotonic() - began >= 0.8
    assert hashlib.sha256(body).hexdigest() == listing["sha256"]


def test_redirect_fault_points_elsewhere(client: httpx2.Client, receiver: Receiver) -> None:
    """recording_redirect_to answers 302 to it, once the credentials are checked."""
    faults(client, recording_redirect_to="http://127.0.0.1:6379/steal")
    listing = call(client, recorded_session(client, receiver))
    assert httpx2.get(listing["url"]).status_code == 401
    response = client.get(listing["url"], follow_redirects=False)
    assert (response.status_code, response.headers["location"]) == (
        302,
        "http://127.0.0.1:6379/steal",
    )


def test_media_fault_settings_are_validated(client: httpx2.Client) -> None:
    """Bad media fault settings are 400; good ones read back."""
    for bad in (
        {"recording_error_status": 404},
        {"recording_cut_rate": 2},
        {"recording_wrong_length": 0.5},
        {"recording_trickle_bytes_per_second": -1},
        {"recording_redirect_to": "/relative"},
        {"recording_404_seconds": "x"},
    ):
        assert client.put("/_sandbox/faults", json=bad).status_code == 400, bad
    faults(client, recording_redirect_to="https://elsewhere.example/x")
    assert client.get("/_sandbox/faults").json()["recording_redirect_to"] == (
        "https://elsewhere.example/x"
    )


def test_standalone_recordings_are_validated(client: httpx2.Client) -> None:
    """A standalone recording needs one of duration_seconds and size_bytes, and a format."""
    bodies: list[object] = [
        {},
        {"duration_seconds": 1, "size_bytes": 1},
        {"format": "ogg", "duration_seconds": 1},
        {"duration_seconds": -1},
        {"size_bytes": True},
        {"duration_seconds": 1, "colour": "red"},
        [],
    ]
    for bad in bodies:
        assert client.post("/_sandbox/recordings", json=bad).status_code == 400, bad
    listing = standalone(client, format="wav", duration_seconds=2)
    assert (listing["size"], listing["duration"], listing["session_uuid"]) == (32044, 2, None)
    assert client.get("/_sandbox/recordings/nope").status_code == 404


def test_large_recording_streams_in_small_memory(client: httpx2.Client) -> None:
    """A 50 MB recording streams whole, matching its sha256, without being built in memory."""
    listing = standalone(client, format="wav", size_bytes=50_000_000)
    assert listing["size"] == 50_000_000
    digest, size = hashlib.sha256(), 0
    tracemalloc.start()
    try:
        with client.stream("GET", listing["url"]) as response:
            for chunk in response.iter_bytes():
                digest.update(chunk)
                size += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (size, digest.hexdigest()) == (listing["size"], listing["sha256"])
    assert peak < 5_000_000  # sandbox and client together, in this process


def test_reset_forgets_recordings(client: httpx2.Client, receiver: Receiver) -> None:
    """Reset forgets every recording; their media is gone."""
    listing = call(client, recorded_session(client, receiver))
    standalone(client, duration_seconds=1)
    assert len(client.get("/_sandbox/recordings").json()["recordings"]) == 2
    client.post("/_sandbox/reset")
    assert client.get("/_sandbox/recordings").json() == {"recordings": []}
    assert client.get(listing["url"]).status_code == 404
