"""Hostile input to the app API: refused cheaply with a problem, never a 500, never stored."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx2
import pytest
import redis
from prometheus_client import CollectorRegistry, Counter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service import metrics
from service.egress import EgressPolicy, build_client
from service.errors import ConfigurationError
from service.models import NotificationKind
from service.settings import Settings
from service.storage import LocalStorage
from service.store import RecordingStore
from service.store.keys import Keys
from service.web.problems import Problem
from service.web.validation import Rules, parse_create
from tests.conftest import make_settings, new_numbers, stored_session
from tests.servers import free_port, serve
from workers import notifications
from workers.dependencies import Dependencies

PROBLEM = "application/problem+json"
_ENV = {
    "REDIS_URL": "redis://127.0.0.1:1/0",
    "VTS_AUTH_ID": "MAXXXXXXXXXXXXXXXXXX",
    "VTS_AUTH_TOKEN": "very-secret-token",
    "PUBLIC_BASE_URL": "https://masking.example.com",
    "API_KEYS": "first-key-0123456789",
}


def _stored(client: redis.Redis) -> list[bytes]:
    """Every key but the apps' records, which the web writes when it starts."""
    return [key for key in client.scan_iter() if not key.startswith(b"masking:apps")]


def _parties() -> str:
    first, second = new_numbers()
    return f'"first_party": "{first}", "second_party": "{second}"'


def _problem(response: httpx2.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


def _post_raw(api: httpx2.Client, raw: str | bytes, **headers: bytes) -> httpx2.Response:
    sent = {b"content-type": b"application/json"} | {k.encode(): v for k, v in headers.items()}
    return api.post("/v1/sessions", content=raw, headers=sent)


@pytest.mark.parametrize(
    "metadata",
    ['{"x": NaN}', '{"x": Infinity}', '{"x": -Infinity}', '{"x": 1e400}',
     '{"x": ' + "7" * 5000 + "}", '{"x": "\\ud800"}', '{"x": ' + "[" * 20_000 + "}"],
)  # fmt: skip
def test_json_beyond_rfc_8259_is_400_and_stores_nothing(
    api: httpx2.Client, redis_client: redis.Redis, metadata: str
) -> None:
    """NaN, infinities, huge numbers, lone surrogates and deep nesting are 400, not stored."""
    response = _post_raw(api, "{" + _parties() + ', "metadata": ' + metadata + "}")
    _problem(response, 400)
    assert _stored(redis_client) == []


def test_deeply_nested_body_is_400(api: httpx2.Client, redis_client: redis.Redis) -> None:
    """A body of 20,000 nested arrays is 400."""
    _problem(_post_raw(api, "[" * 20_000), 400)
    assert _stored(redis_client) == []


@pytest.mark.parametrize("prefer", ["wait=" + "9" * 5000, "wait=\u00b2", "wait=-1"])
def test_hostile_prefer_is_ignored_or_capped(api: httpx2.Client, prefer: str) -> None:
    """A Prefer wait of thousands of digits or a non-ASCII digit is ignored: 202 at once."""
    response = _post_raw(api, "{" + _parties() + "}", prefer=prefer.encode("latin-1"))
    assert response.status_code == 202, response.text


@pytest.mark.parametrize("limit", ["\u00b2", "\u0663", "9" * 5000, "-1", "1.0"])
def test_hostile_limits_are_422(api: httpx2.Client, limit: str) -> None:
    """A limit that is not 1 to 100 in ASCII digits is 422, whatever Unicode calls a digit."""
    body = _problem(api.get("/v1/sessions", params={"limit": limit}), 422)
    assert [e["field"] for e in body["errors"]] == ["limit"]


def test_metadata_size_counts_utf8_bytes(api: httpx2.Client) -> None:
    """1,200 bytes of 'é' in UTF-8 fit the 2 KiB of metadata (escaped they would not)."""
    body = json.loads("{" + _parties() + "}") | {"metadata": {"note": "\u00e9" * 600}}
    assert api.post("/v1/sessions", json=body).status_code == 202
    body = json.loads("{" + _parties() + "}") | {"metadata": {"note": "\u00e9" * 1100}}
    _problem(api.post("/v1/sessions", json=body), 422)


def test_an_unreadable_stored_session_never_breaks_the_list(
    api: httpx2.Client, redis_client: redis.Redis, admin_url: str
) -> None:
    """A stored session that cannot be read is left out of lists; the others are listed."""
    good = api.post("/v1/sessions", json=json.loads("{" + _parties() + "}")).json()["id"]
    bad = api.post("/v1/sessions", json=json.loads("{" + _parties() + "}")).json()["id"]
    redis_client.hset(Keys.session(bad), "metadata", '{"x":NaN}')
    response = api.get("/v1/sessions")
    assert response.status_code == 200, response.text
    assert [s["id"] for s in response.json()["data"]] == [good]
    metrics = httpx2.get(admin_url + "/metrics").text
    assert 'masking_unreadable_records_total{kind="session"}' in metrics


@pytest.mark.parametrize(
    ("number", "reason"),
    [("+14155552345 ext. 99", "extension"),
     ("+14155552345;ext=99", "extension"),
     ("+19005550123", "premium-rate"),
     ("+449098790123", "premium-rate"),
     ("+881631234567", "satellite"),
     ("+445512345678", "uan"),
     ("+447012345678", "personal")],
)  # fmt: skip
def test_numbers_outside_the_policy_are_422(
    api: httpx2.Client, redis_client: redis.Redis, number: str, reason: str
) -> None:
    """Extensions, premium-rate, satellite, UAN and personal numbers are refused, not stored."""
    first, _ = new_numbers()
    response = api.post("/v1/sessions", json={"first_party": first, "second_party": number})
    body = _problem(response, 422)
    (error,) = body["errors"]
    assert error["field"] == "second_party"
    assert reason in error["message"]
    assert number[2:] not in response.text
    assert _stored(redis_client) == []


def test_allowed_number_types_are_configurable() -> None:
    """ALLOWED_NUMBER_TYPES widens (or narrows) the policy; unknown type names are named."""
    env = _ENV
    assert Settings.from_env(env).allowed_number_types == {
        "mobile", "fixed-line", "fixed-line-or-mobile"
    }  # fmt: skip
    wider = Settings.from_env(env | {"ALLOWED_NUMBER_TYPES": "mobile, premium-rate"})
    body = {"first_party": "+19005550123", "second_party": "+447911123456"}
    assert parse_create(body, Rules.from_settings(wider))["first_party"] == "+19005550123"
    with pytest.raises(Problem) as refused:
        parse_create({**body, "first_party": "+14155552345"}, Rules.from_settings(wider))
    assert "fixed-line-or-mobile number" in refused.value.errors[0].message
    with pytest.raises(ConfigurationError, match="ALLOWED_NUMBER_TYPES"):
        Settings.from_env(env | {"ALLOWED_NUMBER_TYPES": "mobile,landline"})


@pytest.mark.parametrize(
    "url",
    ["http://example.com/hook",
     "https://127.0.0.1:8443/hook",
     "https://[::1]:1/",
     "https://localhost/hook",
     "https://10.0.0.1/hook",
     "https://169.254.169.254/latest/meta-data/",
     "https://user:pass@example.com/hook",
     "https://example.com/hook\r\nX-Injected: 1",
     "https://example.com/h\u00f6ok",
     "https://example.com/ hook"],
)  # fmt: skip
def test_callback_urls_outside_the_egress_policy_are_422(
    api: httpx2.Client, redis_client: redis.Redis, url: str
) -> None:
    """callback_url: https only, no credentials, no loopback/private literal, no control
    characters; refused at once (422), never stored to fail later."""
    body = json.loads("{" + _parties() + "}") | {"callback_url": url}
    problem = _problem(api.post("/v1/sessions", json=body), 422)
    assert [e["field"] for e in problem["errors"]] == ["callback_url"]
    assert _stored(redis_client) == []


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[str]]]:
    """An app's receiver on loopback (plain http), keeping the paths it is sent."""
    received: list[str] = []

    async def hook(request: Request) -> Response:
        received.append(request.url.path)
        return Response(status_code=204)

    with serve(Starlette(routes=[Route("/hook", hook, methods=["POST"])])) as url:
        yield url, received


def _notifier(deps: Dependencies, policy: EgressPolicy) -> Dependencies:
    """``deps`` sending notifications under ``policy``."""
    return replace(deps, receivers=build_client(policy, timeout=5), egress=policy)


@pytest.mark.parametrize(
    "answers", [[["127.0.0.1"]], [["93.184.216.34"], ["127.0.0.1"]]], ids=["check", "connect"]
)
def test_notifications_never_reach_a_private_address(
    redis_url: str,
    redis_client: redis.Redis,
    deps: Dependencies,
    receiver: tuple[str, list[str]],
    answers: list[list[str]],
) -> None:
    """A callback host that resolves to loopback, at the check or only at connect time
    (DNS rebinding), gets nothing; the notification is given up, not retried."""
    url, received = receiver
    session = stored_session(redis_url, "ses_" + "a" * 32)
    port = url.rsplit(":", 1)[1]
    hook = f"http://receiver.test:{port}/hook"
    redis_client.hset(Keys.session(session.id), "callback_url", hook)
    replies = iter(answers * 2)
    policy = EgressPolicy(allow_http=True, resolver=lambda host, port: next(replies))
    ctx = _notifier(deps, policy)
    with ctx.receivers:
        notifications.send(ctx, session.id, NotificationKind.ACTIVE, "n-1")
    assert received == []
    allowed = EgressPolicy(allow_http=True, allow_private=True, resolver=lambda h, p: ["127.0.0.1"])
    ctx = _notifier(deps, allowed)
    with ctx.receivers:
        notifications.send(ctx, session.id, NotificationKind.ACTIVE, "n-2")
    assert received == ["/hook"]


@pytest.fixture
def settings(redis_url: str, web_port: int, tmp_path: Path) -> Settings:
    """No sandbox: nothing here reaches VTS. Recordings in a directory of the test's own."""
    return make_settings(
        redis_url,
        "http://127.0.0.1:1",
        public_base_url=f"http://127.0.0.1:{web_port}",
        recordings_dir=tmp_path / "recordings",
    )


AUDIO = b"RIFF\x24\x00\x00\x00WAVE" + bytes(range(32))


@pytest.fixture
def recording(settings: Settings, api: httpx2.Client, redis_client: redis.Redis) -> tuple[str, str]:
    """A stored recording of one of the app's sessions: (its path in the API, its ETag)."""
    session_id = _post_raw(api, "{" + _parties() + "}").json()["id"]
    store = RecordingStore(redis_client)
    pending = store.upsert_pending(session_id, "rec-uuid-1", "wav")
    assert pending is not None
    with LocalStorage(settings.recordings_dir).open_writer(pending.stored_name) as upload:
        upload.write(AUDIO)
        upload.commit()
    sha256 = hashlib.sha256(AUDIO).hexdigest()
    store.mark_stored(pending.id, size=len(AUDIO), sha256=sha256, content_type="audio/wav")
    return f"/v1/recordings/{pending.id}", f'"{sha256}"'


@pytest.mark.parametrize("tags", ["W/{etag}", '"other", {etag}', '"a",W/{etag} , "b"', "*"])
def test_if_none_match_takes_weak_tags_lists_and_star(
    api: httpx2.Client, recording: tuple[str, str], tags: str
) -> None:
    """If-None-Match naming the file among others, weakly, or as * is 304 (RFC 9110)."""
    path, etag = recording
    response = api.get(path, headers={"If-None-Match": tags.format(etag=etag)})
    assert response.status_code == 304
    assert response.headers["etag"] == etag
    assert api.get(path, headers={"If-None-Match": '"other"'}).status_code == 200


@pytest.mark.parametrize(
    ("header", "status", "body"),
    [("bytes=9-3", 200, AUDIO),
     ("bytes=0-" + "9" * 5000, 206, AUDIO),
     ("bytes=" + "9" * 5000 + "-", 416, b""),
     ("bytes=\u0663-4", 200, AUDIO),
     ("bytes=2-4", 206, AUDIO[2:5]),
     ("bytes=-3", 206, AUDIO[-3:]),
     ("bytes=1000-", 416, b"")],
)  # fmt: skip
def test_invalid_ranges_are_ignored_and_unsatisfiable_ones_are_416(
    api: httpx2.Client, recording: tuple[str, str], header: str, status: int, body: bytes
) -> None:
    """An invalid Range is ignored (200); one outside the file is 416; never a 500."""
    response = api.get(recording[0], headers={b"range": header.encode("utf-8")})
    assert response.status_code == status, response.text
    if status != 416:
        assert response.content == body


def test_range_under_a_stale_if_range_is_ignored(
    api: httpx2.Client, recording: tuple[str, str]
) -> None:
    """If-Range with another tag means the client's copy is stale: the whole file (200)."""
    path, etag = recording
    stale = api.get(path, headers={"Range": "bytes=0-1", "If-Range": '"other"'})
    assert (stale.status_code, stale.content) == (200, AUDIO)
    fresh = api.get(path, headers={"Range": "bytes=0-1", "If-Range": etag})
    assert (fresh.status_code, fresh.content) == (206, AUDIO[:2])


def test_no_redirect_is_built_from_the_host_header(web_url: str) -> None:
    """A path with a trailing slash is 404, not a redirect to the Host the client named."""
    response = httpx2.get(web_url + "/healthz/", headers={"Host": "evil.example"})
    assert response.status_code == 404
    assert "location" not in response.headers


def test_worker_metrics_listen_on_loopback_without_a_server_header() -> None:
    """METRICS_HOST defaults to loopback; the metrics server does not name its software."""
    assert Settings.from_env(_ENV).metrics_host == "127.0.0.1"
    assert Settings.from_env(_ENV | {"METRICS_HOST": "0.0.0.0"}).metrics_host == "0.0.0.0"
    with pytest.raises(ConfigurationError, match="METRICS_HOST"):
        Settings.from_env(_ENV | {"METRICS_HOST": "example.com"})
    registry = CollectorRegistry()
    Counter("probe", "A probe", registry=registry).inc()
    port = free_port()
    server = metrics.metrics_server(registry, "127.0.0.1", port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        response = httpx2.get(f"http://127.0.0.1:{port}/metrics")
    finally:
        server.shutdown()
        server.server_close()
    assert response.status_code == 200
    assert "probe_total 1.0" in response.text
    assert "server" not in response.headers


def test_notifications_ignore_proxy_variables(
    redis_url: str,
    redis_client: redis.Redis,
    deps: Dependencies,
    receiver: tuple[str, list[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Proxy variables in the environment are not used: a proxy would connect for us."""
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    url, received = receiver
    session = stored_session(redis_url, "ses_" + "c" * 32)
    redis_client.hset(Keys.session(session.id), "callback_url", f"{url}/hook")
    ctx = _notifier(deps, EgressPolicy(allow_http=True, allow_private=True))
    with ctx.receivers:
        notifications.send(ctx, session.id, NotificationKind.ACTIVE, "n-3")
    assert received == ["/hook"]
