"""Apps are tenants: each sees and changes only its own sessions and recordings, its
Idempotency-Keys are its own, and it spends only its own share of the VTS budget."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import redis

from service.models import NotificationKind, Status
from service.settings import AppKey, Secret, Settings
from service.storage import LocalStorage
from service.store import RecordingStore, Sessions
from service.store.keys import Keys
from service.store.notifications import NotificationStore
from service.web.app import create_app
from service.web.openapi import walk
from tests.conftest import http_client, make_settings, new_numbers

RIDES_KEY = "rides-key-" + "a" * 20
FOOD_KEY = "food-key-" + "b" * 20
# Path parameters the ownership test knows how to fill with another app's resource.
OWNED = ("session_id", "recording_id", "notification_id")


@pytest.fixture
def settings(redis_url: str, sandbox_url: str, web_port: int, tmp_path: Path) -> Settings:
    return make_settings(
        redis_url,
        sandbox_url,
        public_base_url=f"http://127.0.0.1:{web_port}",
        api_keys=(AppKey("rides", Secret(RIDES_KEY)), AppKey("food", Secret(FOOD_KEY))),
        recordings_dir=tmp_path / "recordings",
        # Two apps, three requests each per minute: enough for these tests, and a minute
        # is far longer than any of them, so nothing here depends on timing.
        vts_app_budget=6,
        vts_rate_window=60.0,
    )


def _client(web_url: str, key: str) -> Iterator[httpx2.Client]:
    headers = {"Authorization": f"Bearer {key}"}
    with http_client(web_url, headers=headers, timeout=40) as client:
        yield client


@pytest.fixture
def rides(web_url: str) -> Iterator[httpx2.Client]:
    yield from _client(web_url, RIDES_KEY)


@pytest.fixture
def food(web_url: str) -> Iterator[httpx2.Client]:
    yield from _client(web_url, FOOD_KEY)


def _body() -> dict[str, Any]:
    first, second = new_numbers()
    return {"first_party": first, "second_party": second}


def _stored_recording(settings: Settings, client: redis.Redis, session_id: str) -> str:
    """A stored recording of the session, written as the recordings worker writes one."""
    audio = b"RIFF" + bytes(64)
    recording = RecordingStore(client).upsert_pending(session_id, str(uuid.uuid4()), "wav", 1)
    assert recording is not None
    with LocalStorage(settings.recordings_dir).open_writer(recording.stored_name) as upload:
        upload.write(audio)
        upload.commit()
    sha256 = hashlib.sha256(audio).hexdigest()
    RecordingStore(client).mark_stored(
        recording.id, size=len(audio), sha256=sha256, content_type="audio/wav"
    )
    return recording.id


def _stored_notification(client: redis.Redis, session_id: str) -> str:
    """A notification of the session, recorded as the worker's transition records one."""
    client.hset(Keys.session(session_id), "callback_url", "https://example.com/hook")
    Sessions(client).transition(
        session_id, None, allowed=list(Status), notify=(NotificationKind.ACTIVE, "")
    )
    notifications = NotificationStore(client)
    (notification_id,) = notifications.ids(session_id)
    notifications.unschedule(notification_id)
    return notification_id


def _fill(path: str, resources: dict[str, str]) -> str:
    def resource(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in resources:
            pytest.fail(
                f"{path} takes {{{name}}}: teach this test how to give it another app's "
                "resource, and check the route refuses it"
            )
        return resources[name]

    return re.sub(r"\{(\w+)(?::\w+)?\}", resource, path)


def _v1_routes(settings: Settings) -> list[tuple[str, str]]:
    """(method, path template) of every /v1 route, straight from the routes (mounts walked
    into)."""
    found = []
    for path, route in walk(create_app(settings).routes):
        if path.startswith("/v1"):
            found += [(method, path) for method in sorted(route.methods or ())]
    return found


def _queued_actors(client: redis.Redis, queue: str) -> list[tuple[str, list[Any]]]:
    raw: dict[bytes, bytes] = client.hgetall(Keys.queue_messages(queue))  # type: ignore[assignment]
    return [(m["actor_name"], m["args"]) for m in map(json.loads, raw.values())]


def test_every_v1_route_hides_another_apps_resources(
    settings: Settings, rides: httpx2.Client, food: httpx2.Client, redis_client: redis.Redis
) -> None:
    """Every /v1 route in the router answers another app's session or recording with 404
    (or, taking neither, never shows them) and changes nothing of it."""
    body = _body()
    created = rides.post("/v1/sessions", json=body, headers={"Idempotency-Key": "order-1"})
    session_id = created.json()["id"]
    recording_id = _stored_recording(settings, redis_client, session_id)
    notification_id = _stored_notification(redis_client, session_id)
    owned = {
        "session_id": session_id,
        "recording_id": recording_id,
        "notification_id": notification_id,
    }
    before = rides.get(f"/v1/sessions/{session_id}").json()
    routes = _v1_routes(settings)
    assert {path for _, path in routes} >= {
        "/v1/sessions", "/v1/sessions/{session_id}", "/v1/recordings/{recording_id}"
    }  # fmt: skip
    for method, path in routes:
        takes_owned = "{" in path
        response = food.request(
            method,
            _fill(path, owned),
            json={"record": True} if method == "PATCH" else body if method == "POST" else None,
            headers={"Idempotency-Key": "order-1"},
        )
        if takes_owned:
            assert response.status_code == 404, (method, path, response.text)
            assert response.headers["content-type"] == "application/problem+json"
        else:
            assert response.status_code < 500, (method, path, response.text)
            assert session_id not in response.text, (method, path)
    assert rides.get(f"/v1/sessions/{session_id}").json() == before
    events = rides.get(f"/v1/sessions/{session_id}/events").json()["data"]
    assert [e["type"] for e in events] == ["requested", "recording_stored"]
    assert rides.get(f"/v1/recordings/{recording_id}").status_code == 200
    notifications = rides.get(f"/v1/sessions/{session_id}/notifications").json()["data"]
    assert [(n["id"], n["state"]) for n in notifications] == [(notification_id, "pending")]
    assert not redis_client.zscore(Keys.schedule(), Keys.notification_timer(notification_id))
    queued = _queued_actors(redis_client, "sessions")
    assert [args for actor, args in queued if args[:1] == [session_id]] == [[session_id]]


def test_lists_show_only_the_callers_sessions(rides: httpx2.Client, food: httpx2.Client) -> None:
    """Each app lists its own sessions (filtered and paged), and another app's cursor is
    refused."""
    mine = [rides.post("/v1/sessions", json=_body()).json()["id"] for _ in range(2)]
    theirs = food.post("/v1/sessions", json=_body()).json()["id"]
    assert [s["id"] for s in rides.get("/v1/sessions").json()["data"]] == mine[::-1]
    assert [s["id"] for s in food.get("/v1/sessions?status=pending").json()["data"]] == [theirs]
    page = rides.get("/v1/sessions?limit=1").json()
    assert [s["id"] for s in page["data"]] == [mine[1]]
    rest = rides.get(f"/v1/sessions?limit=1&cursor={page['next_cursor']}").json()
    assert ([s["id"] for s in rest["data"]], rest["next_cursor"]) == ([mine[0]], None)
    stolen = food.get(f"/v1/sessions?cursor={page['next_cursor']}")
    assert stolen.status_code == 422


def test_the_same_idempotency_key_in_two_apps_makes_two_sessions(
    rides: httpx2.Client, food: httpx2.Client
) -> None:
    """An Idempotency-Key is the app's own: another app using it gets its own session."""
    body, key = _body(), {"Idempotency-Key": "checkout-42"}
    first = rides.post("/v1/sessions", json=body, headers=key)
    second = food.post("/v1/sessions", json=body, headers=key)
    again = rides.post("/v1/sessions", json=body, headers=key)
    assert (first.status_code, second.status_code) == (202, 202)
    assert first.json()["id"] != second.json()["id"]
    assert "idempotent-replayed" not in second.headers
    assert again.json()["id"] == first.json()["id"]


def test_an_app_over_its_share_gets_429_and_the_other_app_does_not(
    rides: httpx2.Client, food: httpx2.Client
) -> None:
    """Over its share of the VTS budget an app gets 429 with Retry-After and nothing is
    stored; the other app's share is untouched, and replays cost nothing."""
    body, key = _body(), {"Idempotency-Key": "first"}
    first = rides.post("/v1/sessions", json=body, headers=key)
    assert first.status_code == 202
    path = f"/v1/sessions/{first.json()['id']}"
    assert [rides.post("/v1/sessions", json=_body()).status_code for _ in range(2)] == [202, 202]
    refused = rides.post("/v1/sessions", json=_body())
    assert refused.status_code == 429, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert rides.patch(path, json={"record": True}).status_code == 429
    assert rides.delete(path).status_code == 429
    assert [e["type"] for e in rides.get(f"{path}/events").json()["data"]] == ["requested"]
    assert rides.post("/v1/sessions", json=body, headers=key).status_code == 202
    assert len(rides.get("/v1/sessions").json()["data"]) == 3
    assert [food.post("/v1/sessions", json=_body()).status_code for _ in range(3)] == [202] * 3


def test_the_timeline_and_log_lines_name_the_app_that_acted(
    rides: httpx2.Client, capsys: pytest.CaptureFixture[str]
) -> None:
    """What an app asked is in the timeline and the request's log line under its name,
    and its key is in no log line."""
    capsys.readouterr()
    session_id = rides.post("/v1/sessions", json=_body()).json()["id"]
    assert rides.patch(f"/v1/sessions/{session_id}", json={"record": True}).status_code == 202
    assert rides.delete(f"/v1/sessions/{session_id}").status_code == 202
    events = rides.get(f"/v1/sessions/{session_id}/events").json()["data"]
    assert [(e["type"], e["app"]) for e in events] == [
        ("requested", "rides"), ("update_requested", "rides"), ("end_requested", "rides")
    ]  # fmt: skip
    logged = capsys.readouterr().err
    lines = [json.loads(line) for line in logged.splitlines() if line.startswith("{")]
    requests = [line for line in lines if line["event"] == "http_request"]
    assert len(requests) == 4
    assert {line.get("app") for line in requests} == {"rides"}
    assert RIDES_KEY not in logged
