"""Notifications apps can rely on: every attempt in a delivery log the app reads, retries
that honour Retry-After, 410 disabling the endpoint, redelivery with the same webhook-id,
recovery, ping; the records go with their session. A real web, worker and receiver."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import dramatiq
import httpx2
import pytest
import redis
from standardwebhooks.webhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.settings import AppKey, Secret, Settings
from service.store import DeadLetters, Retention
from service.store.apps import AppStore
from service.store.keys import Keys
from service.store.notifications import NotificationStore
from tests.conftest import API_KEY, http_client, make_settings, new_numbers, wait_until
from tests.servers import serve

OTHER_KEY = "other-app-key-" + "c" * 20


@dataclass
class Got:
    webhook_id: str
    type: str
    answered: int


@dataclass
class Endpoint:
    """An app's endpoint: answers each request with the next of ``answers`` (status,
    headers), then with ``status``; verifies signatures and keeps what it got."""

    status: int = 204
    answers: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    got: list[Got] = field(default_factory=list)
    secret: str = ""

    async def handle(self, request: Request) -> Response:
        body = (await request.body()).decode()
        Webhook(self.secret).verify(body, dict(request.headers))
        status, headers = self.answers.pop(0) if self.answers else (self.status, {})
        kind = json.loads(body)["type"]
        self.got.append(Got(request.headers["webhook-id"], kind, status))
        return Response(status_code=status, headers=headers)

    def delivered(self) -> list[str]:
        return [g.webhook_id for g in self.got if 200 <= g.answered < 300]


@pytest.fixture
def settings(
    redis_url: str, sandbox_url: str, web_port: int, request: pytest.FixtureRequest
) -> Settings:
    """Two apps; a short retry schedule; a test may add settings (indirect parameter)."""
    return make_settings(
        redis_url,
        sandbox_url,
        public_base_url=f"http://127.0.0.1:{web_port}",
        api_keys=(AppKey("test", Secret(API_KEY)), AppKey("other", Secret(OTHER_KEY))),
        # The receiver is plain http on loopback: what production refuses.
        egress_allow_http=True,
        egress_allow_private=True,
        notification_retry_schedule=(0.5, 1.0, 2.0, 4.0),
        **getattr(request, "param", {}),
    )


@pytest.fixture
def endpoint(redis_client: redis.Redis) -> Iterator[tuple[str, Endpoint]]:
    found = Endpoint(secret=AppStore(redis_client).notification_secrets("test")[0])
    with serve(Starlette(routes=[Route("/hook", found.handle, methods=["POST"])])) as url:
        yield f"{url}/hook", found


@pytest.fixture
def other(web_url: str) -> Iterator[httpx2.Client]:
    headers = {"Authorization": f"Bearer {OTHER_KEY}"}
    with http_client(web_url, headers=headers, timeout=40) as client:
        yield client


def _active(api: httpx2.Client, url: str) -> dict[str, Any]:
    """A session with ``url`` as its callback_url, once active."""
    first, second = new_numbers()
    body = {"first_party": first, "second_party": second, "callback_url": url}
    session: dict[str, Any] = api.post(
        "/v1/sessions", json=body, headers={"Prefer": "wait=20"}
    ).json()
    assert session["status"] == "active"
    return session


def _log(api: httpx2.Client, session_id: str) -> list[dict[str, Any]]:
    answer = api.get(f"/v1/sessions/{session_id}/notifications")
    assert answer.status_code == 200
    data: list[dict[str, Any]] = answer.json()["data"]
    return data


def _settled(api: httpx2.Client, session_id: str, count: int) -> list[dict[str, Any]]:
    """The session's log once it has ``count`` records, none pending."""
    return wait_until(  # type: ignore[no-any-return]
        lambda: (
            (log := _log(api, session_id))
            and len(log) == count
            and all(n["state"] != "pending" for n in log)
            and log
        ),
        timeout=40,
    )


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_an_endpoint_down_for_several_retries_gets_everything_and_the_log_shows_it(
    api: httpx2.Client,
    sandbox: httpx2.Client,
    worker: dramatiq.Worker,
    endpoint: tuple[str, Endpoint],
) -> None:
    """An endpoint answering 503 through the first three attempts, then 200, gets every
    notification; each attempt, with its status and latency, is in the app's log."""
    url, receiver = endpoint
    receiver.answers = [(503, {})] * 3
    session = _active(api, url)
    calls = f"/_sandbox/sessions/{session['vts_session_uuid']}/calls"
    assert sandbox.post(calls, json={"caller": "first"}).status_code == 202
    log = _settled(api, session["id"], 2)
    assert [n["type"] for n in log] == ["session.active", "session.call_ended"]
    assert all(n["state"] == "delivered" for n in log)
    assert sorted(receiver.delivered()) == sorted(n["id"] for n in log)
    attempts = [a for n in log for a in n["attempts"]]
    assert [a["status"] for a in attempts].count(503) == 3
    assert len(attempts) == len(receiver.got) == 5
    assert all(a["latency_ms"] >= 0 and "at" in a for a in attempts)
    assert all(n["next_attempt_at"] is None for n in log)


def test_retry_after_is_honoured_up_to_the_longest_step(
    api: httpx2.Client, worker: dramatiq.Worker, endpoint: tuple[str, Endpoint]
) -> None:
    """A 429 with Retry-After: 2 is tried again no sooner than 2 s later (the schedule's
    first step is 0.5 s); a Retry-After of an hour is cut to the longest step (4 s)."""
    url, receiver = endpoint
    receiver.answers = [(429, {"retry-after": "2"}), (503, {"retry-after": "3600"})]
    session = _active(api, url)
    (delivered,) = _settled(api, session["id"], 1)
    assert delivered["state"] == "delivered"
    first, second, third = delivered["attempts"]
    assert (_at(second["at"]) - _at(first["at"])).total_seconds() >= 1.9
    # 4 s and the attempts' own time; far from the hour asked for.
    assert (_at(third["at"]) - _at(second["at"])).total_seconds() < 60
    assert [a["status"] for a in delivered["attempts"]] == [429, 503, 204]


def test_gone_disables_the_endpoint_and_recover_after_enable_delivers_once_each(
    api: httpx2.Client,
    worker: dramatiq.Worker,
    endpoint: tuple[str, Endpoint],
    admin_url: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """410 disables the endpoint at once: later notifications are kept failed without an
    attempt; once the app is enabled, recover sends each exactly once."""
    url, receiver = endpoint
    since = datetime.now(UTC).isoformat()
    receiver.answers = [(410, {})]
    gone = _active(api, url)
    (first,) = _settled(api, gone["id"], 1)
    assert first["state"] == "failed"
    assert [a["status"] for a in first["attempts"]] == [410]
    later = _active(api, url)
    (kept,) = _settled(api, later["id"], 1)
    assert kept["state"] == "failed"
    assert kept["attempts"] == []
    assert len(receiver.got) == 1
    assert _disabled_endpoints(admin_url) == 1
    monkeypatch.setenv("REDIS_URL", redis_url)
    assert _masking("apps", "enable", "test") == 0
    assert "enabled http://127.0.0.1:" in capsys.readouterr().out
    assert _disabled_endpoints(admin_url) == 0
    answer = api.post("/v1/notifications/recover", json={"since": since})
    assert answer.status_code == 202
    assert answer.json()["queued"] == 2
    wait_until(lambda: len(receiver.delivered()) == 2, timeout=30)
    _settled(api, later["id"], 1)
    assert sorted(receiver.delivered()) == sorted([first["id"], kept["id"]])
    again = api.post("/v1/notifications/recover", json={"since": since})
    assert again.json()["queued"] == 0


@pytest.mark.parametrize("settings", [{"notification_disable_after": 1.0}], indirect=True)
def test_an_endpoint_failing_for_long_enough_is_disabled_until_a_ping_succeeds(
    api: httpx2.Client, worker: dramatiq.Worker, endpoint: tuple[str, Endpoint], admin_url: str
) -> None:
    """An endpoint failing every attempt for NOTIFICATION_DISABLE_AFTER (1 s here) is
    disabled before the schedule is spent: the record is failed, nothing more is tried;
    a ping it answers 2xx enables it again."""
    url, receiver = endpoint
    receiver.status = 500
    session = _active(api, url)
    (record,) = _settled(api, session["id"], 1)
    assert record["state"] == "failed"
    assert 2 <= len(record["attempts"]) < 5
    assert _disabled_endpoints(admin_url) == 1
    tried = len(receiver.got)
    later = _active(api, url)
    (kept,) = _settled(api, later["id"], 1)
    assert (kept["state"], kept["attempts"], len(receiver.got)) == ("failed", [], tried)
    receiver.status = 204
    assert api.post("/v1/notifications/ping", json={"url": url}).json()["delivered"]
    assert _disabled_endpoints(admin_url) == 0
    assert api.post(f"/v1/notifications/{kept['id']}/redeliver").status_code == 202
    wait_until(lambda: kept["id"] in receiver.delivered(), timeout=30)


def test_redelivery_keeps_the_webhook_id(
    api: httpx2.Client, worker: dramatiq.Worker, endpoint: tuple[str, Endpoint]
) -> None:
    """A delivered notification redelivered is sent again with the same webhook-id, and
    the log shows both attempts."""
    url, receiver = endpoint
    session = _active(api, url)
    (record,) = _settled(api, session["id"], 1)
    answer = api.post(f"/v1/notifications/{record['id']}/redeliver")
    assert answer.status_code == 202
    assert answer.json()["state"] == "pending"
    wait_until(lambda: len(receiver.got) == 2, timeout=30)
    (again,) = _settled(api, session["id"], 1)
    assert [g.webhook_id for g in receiver.got] == [record["id"], record["id"]]
    assert len(again["attempts"]) == 2
    assert again["state"] == "delivered"


def test_ping_reports_status_and_latency(
    api: httpx2.Client, worker: dramatiq.Worker, endpoint: tuple[str, Endpoint]
) -> None:
    """A ping to the app's endpoint arrives signed and its attempt (status, latency) is
    the answer; a failing endpoint's status is reported, not an error."""
    url, receiver = endpoint
    answer = api.post("/v1/notifications/ping", json={"url": url})
    assert answer.status_code == 200
    ping = answer.json()
    assert ping["delivered"] is True
    assert ping["attempt"]["status"] == 204
    assert ping["attempt"]["latency_ms"] > 0
    assert [g.type for g in receiver.got] == ["ping"]
    receiver.status = 500
    failed = api.post("/v1/notifications/ping", json={"url": url}).json()
    assert failed["delivered"] is False
    assert failed["attempt"]["status"] == 500


def test_ping_without_a_url_or_with_a_bad_body_is_a_client_error(api: httpx2.Client) -> None:
    """A ping with no url from an app that has no endpoint yet, a body that is not JSON,
    or an unknown field, is a 4xx problem."""
    assert api.post("/v1/notifications/ping").status_code == 422
    bad = api.post(
        "/v1/notifications/ping", content=b"{", headers={"content-type": "application/json"}
    )
    assert bad.status_code == 400
    assert api.post("/v1/notifications/ping", json={"uri": "x"}).status_code == 422
    for url in ("ftp://x", "http://", "https://user:pw@example.com/", "x" * 3000):
        assert api.post("/v1/notifications/ping", json={"url": url}).status_code == 422, url


def test_recover_needs_a_time_with_its_zone(api: httpx2.Client) -> None:
    """since without a zone, not a time, or missing is a 422 problem, never a 500."""
    for body in ({"since": "2026-01-01T00:00:00"}, {"since": "yesterday"}, {}, {"since": 5}):
        answer = api.post("/v1/notifications/recover", json=body)
        assert answer.status_code == 422, body
        assert answer.headers["content-type"] == "application/problem+json"
    assert api.post("/v1/notifications/recover", content=b"x").status_code == 415


def test_another_apps_notifications_are_not_found(
    api: httpx2.Client,
    other: httpx2.Client,
    worker: dramatiq.Worker,
    endpoint: tuple[str, Endpoint],
) -> None:
    """Another app gets 404 for a session's notifications and for redelivering one of
    them, and its recovery queues none of them."""
    url, _ = endpoint
    session = _active(api, url)
    (record,) = _settled(api, session["id"], 1)
    assert other.get(f"/v1/sessions/{session['id']}/notifications").status_code == 404
    assert other.post(f"/v1/notifications/{record['id']}/redeliver").status_code == 404
    assert api.post("/v1/notifications/nope/redeliver").status_code == 404
    since = {"since": "2000-01-01T00:00:00+00:00"}
    assert other.post("/v1/notifications/recover", json=since).json()["queued"] == 0


def test_erasure_and_purge_remove_the_records(
    api: httpx2.Client,
    worker: dramatiq.Worker,
    endpoint: tuple[str, Endpoint],
    redis_client: redis.Redis,
) -> None:
    """Erasing a session deletes its notifications, their attempts and index entries; so
    does its purge."""
    url, _ = endpoint
    erased, purged = _active(api, url), _active(api, url)
    for session in (erased, purged):
        _settled(api, session["id"], 1)
        api.delete(f"/v1/sessions/{session['id']}")
        _settled(api, session["id"], 2)
    ids = [n["id"] for s in (erased, purged) for n in _log(api, s["id"])]
    assert api.post(f"/v1/sessions/{erased['id']}/erase").status_code == 200
    assert _log(api, erased["id"]) == []
    Retention(redis_client, NotificationStore(redis_client)).purge_session(purged["id"], [])
    for notification_id in ids:
        assert not redis_client.exists(Keys.notification(notification_id))
        assert not redis_client.exists(Keys.notification_attempts(notification_id))
    assert redis_client.zcard(Keys.app_notifications("test")) == 0
    assert redis_client.zcard(Keys.pending_notifications()) == 0
    assert not redis_client.exists(Keys.session_notifications(erased["id"]))


def _disabled_endpoints(admin_url: str) -> float:
    text = httpx2.get(admin_url + "/metrics/cluster").text
    (line,) = [x for x in text.splitlines() if x.startswith("masking_notification_endpoints_")]
    return float(line.split()[-1])


def _masking(*argv: str) -> int:
    """The exit status of ``masking ARGV`` (REDIS_URL set by the test)."""
    from service.tools import cli

    try:
        cli.main(list(argv))
    except SystemExit as done:
        return int(done.code or 0)
    return 0


def test_operators_list_show_redeliver_and_recover_notifications(
    api: httpx2.Client,
    worker: dramatiq.Worker,
    endpoint: tuple[str, Endpoint],
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """masking notifications says when there are none, lists them by app, session and
    state, shows one with its attempts, redelivers it and recovers an app's failed ones."""
    monkeypatch.setenv("REDIS_URL", redis_url)
    assert _masking("notifications", "list") == 0
    assert capsys.readouterr().out == "no notifications\n"
    url, receiver = endpoint
    receiver.answers = [(410, {})]
    session = _active(api, url)
    (record,) = _settled(api, session["id"], 1)
    assert _masking("notifications", "list", "--state", "failed", "--app", "test") == 0
    listed = capsys.readouterr().out
    assert record["id"] in listed
    assert "last=410" in listed
    assert _masking("notifications", "list", "--state", "delivered") == 0
    assert capsys.readouterr().out == "no notifications\n"
    assert _masking("notifications", "show", record["id"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [a["status"] for a in shown["attempts"]] == [410]
    assert _masking("notifications", "show", "nope") == 1
    assert _masking("apps", "enable", "test") == 0
    assert _masking("notifications", "redeliver", record["id"]) == 0
    wait_until(lambda: receiver.delivered() == [record["id"]], timeout=30)
    receiver.answers = [(410, {})]
    later = _active(api, url)
    _settled(api, later["id"], 1)
    assert _masking("apps", "enable", "test") == 0
    since = "2000-01-01T00:00:00Z"
    assert _masking("notifications", "recover", "--app", "test", "--since", since) == 0
    assert "queued 1 notifications of test again" in capsys.readouterr().out
    wait_until(lambda: len(receiver.delivered()) == 2, timeout=30)
    assert _masking("notifications", "list", "--session", later["id"]) == 0
    assert "delivered" in capsys.readouterr().out


def test_operators_discard_dead_letters_and_are_told_when_there_are_none(
    redis_url: str,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """masking dlq list says when there are no dead letters; discard drops one by id, or
    every one with --all, with its note."""
    from service import messages
    from service.messages import SessionRef

    monkeypatch.setenv("REDIS_URL", redis_url)
    assert _masking("dlq", "list") == 0
    assert capsys.readouterr().out == "no dead letters\n"
    ids = []
    for n in range(3):
        # Written as dramatiq's nack writes a dead letter.
        message = messages.PURGE_SESSION.message(SessionRef(f"ses_{n:032x}"))
        queue = message.queue_name
        redis_client.zadd(Keys.dead_letters(queue), {message.redis_message_id: 1000 + n})
        redis_client.hset(
            Keys.dead_letter_messages(queue), message.redis_message_id, message.payload
        )
        DeadLetters(redis_client).note_dead_letter(message.redis_message_id, "OSError: disk")
        ids.append(message.redis_message_id)
    assert _masking("dlq", "discard", ids[0]) == 0
    assert f"discarded {ids[0]} (purge_session)" in capsys.readouterr().out
    assert not redis_client.exists(Keys.dead_letter_note(ids[0]))
    assert _masking("dlq", "discard", "--all") == 0
    assert capsys.readouterr().out.count("discarded") == 2
    assert _masking("dlq", "list") == 0
    assert capsys.readouterr().out == "no dead letters\n"
    assert _masking("dlq", "discard", "--all") == 0
    assert capsys.readouterr().out == "no dead letters\n"
