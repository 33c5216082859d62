"""Erasure and deletion: POST /v1/sessions/{id}/erase leaves no number in Redis and no
recording in storage, keeps counters and a number-free timeline; DELETE
/v1/recordings/{id} deletes one recording. Numbers at rest live in the session only."""

from __future__ import annotations

from pathlib import Path

import dramatiq
import httpx2
import pytest
import redis

from service.settings import Settings
from service.store.events import webhook_totals
from service.store.keys import Keys
from tests.conftest import loopback_settings, wait_until
from tests.datalife import end, forms, holding, late_leg_end, recorded_session, store_unseen
from tests.test_webhooks import SESSION, Caller


@pytest.fixture
def settings(redis_url: str, sandbox_url: str, web_port: int, recordings_dir: Path) -> Settings:
    return loopback_settings(redis_url, sandbox_url, web_port, recordings_dir=recordings_dir)


def _files(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()} if directory.exists() else set()


def test_numbers_at_rest_are_in_the_session_record_only(
    api: httpx2.Client, sandbox: httpx2.Client, worker: dramatiq.Worker, redis_client: redis.Redis
) -> None:
    """After calls and recordings, the only key holding a party's full number is the
    session's own record: stored callbacks, timeline and indexes keep none."""
    done = recorded_session(api, sandbox)
    numbers = forms(done.numbers[0]) + forms(done.numbers[1])
    assert redis_client.zcard(Keys.webhooks()) > 0  # the callbacks are stored
    assert holding(redis_client, *numbers) == [Keys.session(done.id)]


def test_erasure_leaves_no_number_and_no_recording(
    api: httpx2.Client,
    sandbox: httpx2.Client,
    worker: dramatiq.Worker,
    redis_client: redis.Redis,
    recordings_dir: Path,
) -> None:
    """Erasing an ended session masks its parties, clears its metadata, deletes its
    recordings (404, file gone); counters stay, and the timeline records the erasure."""
    done = recorded_session(api, sandbox, metadata={"rider": "Ann"})
    before = end(api, done.id)
    assert _files(recordings_dir) == {f"{done.recording['id']}.wav"}

    erased = api.post(f"/v1/sessions/{done.id}/erase")
    assert erased.status_code == 200, erased.text
    body = erased.json()
    first, second = done.numbers
    assert (body["first_party"], body["second_party"]) == ("***" + first[-4:],
                                                          "***" + second[-4:])  # fmt: skip
    assert body["metadata"] == {}
    counters = ("interaction_count", "call_count", "billed_duration", "call_amount")
    assert {k: body[k] for k in counters} == {k: before[k] for k in counters}
    assert [r["status"] for r in body["recordings"]] == ["deleted"]
    assert api.get(done.recording["url"]).status_code == 404
    wait_until(lambda: not _files(recordings_dir), timeout=30, interval=0.1)
    assert not holding(redis_client, *forms(first), *forms(second), b"Ann")

    again = api.post(f"/v1/sessions/{done.id}/erase")
    assert again.status_code == 200
    assert again.json() == body | {"updated_at": again.json()["updated_at"]}
    timeline = api.get(f"/v1/sessions/{done.id}/events").json()["data"]
    assert [e["type"] for e in timeline].count("erased") == 1
    assert "vts_event" in [e["type"] for e in timeline]


def test_erasure_of_a_live_or_unknown_session_is_refused(
    api: httpx2.Client, sandbox: httpx2.Client, worker: dramatiq.Worker
) -> None:
    """A live session is 409 (end it first), an unknown one 404; neither is changed."""
    done = recorded_session(api, sandbox)
    refused = api.post(f"/v1/sessions/{done.id}/erase")
    assert refused.status_code == 409
    assert refused.headers["content-type"] == "application/problem+json"
    assert api.get(f"/v1/sessions/{done.id}").json()["first_party"] == done.numbers[0]
    assert api.post("/v1/sessions/ses_" + "0" * 32 + "/erase").status_code == 404


def test_deleting_a_recording(
    api: httpx2.Client, sandbox: httpx2.Client, worker: dramatiq.Worker, recordings_dir: Path
) -> None:
    """DELETE removes the recording: 204, then 404 to GET and DELETE, its file deleted,
    the session listing it as deleted; the session itself is untouched."""
    done = recorded_session(api, sandbox)
    url = done.recording["url"]
    assert api.delete(url).status_code == 204
    assert api.get(url).status_code == 404
    assert api.delete(url).status_code == 404
    wait_until(lambda: not _files(recordings_dir), timeout=30, interval=0.1)
    session = api.get(f"/v1/sessions/{done.id}").json()
    assert [(r["id"], r["status"], r["url"]) for r in session["recordings"]] == [
        (done.recording["id"], "deleted", None)
    ]
    assert session["status"] == "active"
    timeline = api.get(f"/v1/sessions/{done.id}/events").json()["data"]
    assert "recording_deleted" in [e["type"] for e in timeline]


def test_a_callback_for_an_erased_session_is_dropped_and_counts_nothing(
    api: httpx2.Client,
    sandbox: httpx2.Client,
    worker: dramatiq.Worker,
    redis_client: redis.Redis,
    settings: Settings,
    web_url: str,
) -> None:
    """After erasure a signed callback for the session is answered 200 and stored nowhere;
    one a web stored before it could know is dropped and deleted by the worker; neither
    changes a counter."""
    done = recorded_session(api, sandbox)
    end(api, done.id)
    erased = api.post(f"/v1/sessions/{done.id}/erase").json()
    uuid = done.session["vts_session_uuid"]
    caller = Caller(web_url, settings.public_base_url)
    stored_before = redis_client.zcard(Keys.webhooks())
    assert caller.post(SESSION, late_leg_end(uuid, done.numbers[0])).status_code == 200
    caller.client.close()
    assert redis_client.zcard(Keys.webhooks()) == stored_before
    assert not redis_client.exists(Keys.callbacks(uuid))
    assert webhook_totals(redis_client)["dropped"] == 1

    store_unseen(redis_client, "stored-before-erasure", late_leg_end(uuid, done.numbers[0], 901))
    wait_until(lambda: not redis_client.exists(Keys.webhook("stored-before-erasure")), timeout=30)
    assert not redis_client.exists(Keys.callbacks(uuid))
    after = api.get(f"/v1/sessions/{done.id}").json()
    counters = ("interaction_count", "call_count", "billed_duration", "call_amount")
    assert {k: after[k] for k in counters} == {k: erased[k] for k in counters}
