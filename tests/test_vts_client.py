"""VtsClient against httpx2.MockTransport: requests sent, answers classified."""

from __future__ import annotations

import base64
import json
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from email.utils import format_datetime
from typing import Any

import httpx2
import pytest
import redis
from structlog.testing import capture_logs

from service.errors import (
    VtsError,
    VtsNoNumberAvailable,
    VtsNotFound,
    VtsOutcomeUnknown,
    VtsRejected,
    VtsUnavailable,
)
from service.vts.client import VtsClient
from service.vts.ratelimit import RateLimiter

Handler = Callable[[httpx2.Request], httpx2.Response]
BASE = "https://vts.test"
SESSIONS = "/v1/Account/MA123/Masking/Session/"
NUMBERS = ("4155552345", "2165554567", "2205550020")


def session_json(uuid: str = "u-1", **overrides: object) -> dict[str, Any]:
    session: dict[str, Any] = {
        "session_uuid": uuid,
        "virtual_number": "12205550020",
        "first_party": "14155552345",
        "second_party": "12165554567",
        "status": "active",
        "created_time": "2024-01-03 13:35:51 +0000 UTC",
        "total_call_amount": 0.0065,
    }
    session.update(overrides)
    return session


def created(uuid: str = "u-1") -> dict[str, Any]:
    return {
        "api_id": "a",
        "message": "Session created",
        "session_uuid": uuid,
        "virtual_number": "+12205550020",
        "session": session_json(uuid),
    }


class Recorder:
    """A MockTransport handler that records requests and answers from a script."""

    def __init__(self, *answers: httpx2.Response | Handler | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx2.Request] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, httpx2.Response):
            return answer
        return answer(request)


@contextmanager
def vts(*answers: httpx2.Response | Handler | Exception) -> Iterator[tuple[VtsClient, Recorder]]:
    recorder = Recorder(*answers)
    client = VtsClient(
        base_url=BASE,
        auth_id="MA123",
        auth_token="secret-token",
        transport=httpx2.MockTransport(recorder),
    )
    with client:
        yield client, recorder


def reply(status: int, body: object = None, **kwargs: Any) -> httpx2.Response:
    if body is None:
        return httpx2.Response(status, **kwargs)
    if isinstance(body, bytes | str):
        return httpx2.Response(status, content=body, **kwargs)
    return httpx2.Response(status, json=body, **kwargs)


def raising(exc_type: type[httpx2.TransportError]) -> Handler:
    def handler(request: httpx2.Request) -> httpx2.Response:
        raise exc_type(f"boom for {request.url}", request=request)

    return handler


def assert_no_numbers(text: str) -> None:
    for number in NUMBERS:
        assert number not in text


def chain_text(exc: BaseException) -> str:
    """What a traceback prints about ``exc`` and the exceptions chained to it."""
    parts: list[str] = []
    current: BaseException | None = exc
    while current is not None:
        parts.extend(traceback.format_exception_only(current))
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )
    return "".join(parts)


def test_create_posts_json_with_basic_auth() -> None:
    """create_session POSTs the params as JSON to the sessions path with Basic auth."""
    with vts(reply(201, created())) as (client, recorder):
        session = client.create_session({"first_party": "+14155552345", "record": True})
    (request,) = recorder.requests
    assert request.method == "POST"
    assert request.url.path == SESSIONS
    assert json.loads(request.content) == {"first_party": "+14155552345", "record": True}
    assert request.headers["Content-Type"] == "application/json"
    expected = base64.b64encode(b"MA123:secret-token").decode()
    assert request.headers["Authorization"] == f"Basic {expected}"
    assert session.session_uuid == "u-1"
    assert session.virtual_number == "+12205550020"
    assert session.total_call_amount == Decimal("0.0065")


@pytest.mark.parametrize("status", [200, 201, 202])
def test_any_2xx_create_is_success(status: int) -> None:
    """Any 2xx answer to create is a created session."""
    with vts(reply(status, created("u-9"))) as (client, _):
        assert client.create_session({}).session_uuid == "u-9"


def test_create_reads_bare_dialect() -> None:
    """A bare-dialect create answer reads as well as the envelope."""
    bare = {key: str(value) for key, value in session_json("u-2").items()}
    with vts(reply(201, bare)) as (client, _):
        session = client.create_session({})
    assert (session.session_uuid, session.first_party) == ("u-2", "+14155552345")


@pytest.mark.parametrize("body", [b"", b"<html>oops</html>", b'{"api_id": "a"}', b"[1, 2"])
def test_unreadable_create_answer_is_outcome_unknown(body: bytes) -> None:
    """An unreadable 2xx to create means the session may exist: VtsOutcomeUnknown."""
    with vts(reply(201, body)) as (client, _), pytest.raises(VtsOutcomeUnknown) as caught:
        client.create_session({})
    assert str(caught.value) == "VTS sent a response we cannot read"
    assert caught.value.status == 201


def test_get_reads_envelope() -> None:
    """get_session GETs the session's path and reads the get envelope."""
    answer = {"api_id": "a", "response": session_json("u-3", status="expired")}
    with vts(reply(200, answer)) as (client, recorder):
        session = client.get_session("u-3")
    assert recorder.requests[0].method == "GET"
    assert recorder.requests[0].url.path == f"{SESSIONS}u-3/"
    assert session.status == "expired"


def test_session_uuid_is_escaped_in_path() -> None:
    """A session uuid cannot change the path it is put into."""
    answer = {"response": session_json("u-3")}
    with vts(reply(200, answer)) as (client, recorder):
        client.get_session("../../Call/x")
    assert recorder.requests[0].url.raw_path.decode() == f"{SESSIONS}..%2F..%2FCall%2Fx/"


@pytest.mark.parametrize("body", [b"", b"garbage", b'{"api_id": "a", "response": {}}'])
def test_unreadable_get_answer_is_unavailable(body: bytes) -> None:
    """A garbled 2xx to get is retryable: VtsUnavailable with the status."""
    with vts(reply(200, body)) as (client, _), pytest.raises(VtsUnavailable) as caught:
        client.get_session("u-1")
    assert type(caught.value) is VtsUnavailable
    assert caught.value.status == 200


def test_update_posts_to_session_path() -> None:
    """update_session POSTs JSON to the session's path and reads the answer."""
    answer = {"api_id": "a", "message": "Session updated", "session": session_json("u-4")}
    with vts(reply(200, answer)) as (client, recorder):
        session = client.update_session("u-4", {"session_expiry": 600})
    (request,) = recorder.requests
    assert (request.method, request.url.path) == ("POST", f"{SESSIONS}u-4/")
    assert json.loads(request.content) == {"session_expiry": 600}
    assert session is not None
    assert session.session_uuid == "u-4"


@pytest.mark.parametrize("answer", [reply(204), reply(200, b"{not json"), reply(200, {"a": 1})])
def test_update_with_unreadable_2xx_is_none(answer: httpx2.Response) -> None:
    """A 2xx update whose body cannot be read is a success without a session: None."""
    with vts(answer) as (client, _), capture_logs() as logs:
        assert client.update_session("u-4", {"record": False}) is None
    assert "vts_update_unreadable" in [entry["event"] for entry in logs]


@pytest.mark.parametrize(
    "answer",
    [
        reply(204),
        reply(200, {"api_id": "a", "message": "Session expired"}),
        reply(202, b"<<malformed"),
        reply(200, b""),
    ],
)
def test_expire_succeeds_on_any_2xx_body(answer: httpx2.Response) -> None:
    """expire_session DELETEs the session; any 2xx is success whatever the body."""
    with vts(answer) as (client, recorder):
        client.expire_session("u-5")
    assert (recorder.requests[0].method, recorder.requests[0].url.path) == (
        "DELETE",
        f"{SESSIONS}u-5/",
    )


def test_expire_of_unknown_session_is_not_found() -> None:
    """Expiring a session VTS does not know raises VtsNotFound."""
    answer = reply(404, {"api_id": "a", "error": "session not found"})
    with vts(answer) as (client, _), pytest.raises(VtsNotFound) as caught:
        client.expire_session("u-6")
    assert caught.value.status == 404
    assert "session not found" in str(caught.value)


def test_list_sends_filters_as_query() -> None:
    """list_sessions sends the filters, status, UTC creation time and paging in the query."""
    answer = {"api_id": "a", "response": {"meta": {"next": None}, "objects": [session_json()]}}
    since = datetime(2024, 1, 3, 15, 5, 9, 999, tzinfo=timezone(timedelta(hours=2)))
    with vts(reply(200, answer)) as (client, recorder):
        sessions = client.list_sessions(
            first_party="+14155552345", second_party="+12165554567", created_since=since, limit=5
        )
    (request,) = recorder.requests
    assert request.url.path == SESSIONS
    assert dict(request.url.params) == {
        "status": "all",
        "first_party": "+14155552345",
        "second_party": "+12165554567",
        "created_time__gte": "2024-01-03 13:05:09",
        "limit": "5",
        "offset": "0",
    }
    assert [s.session_uuid for s in sessions] == ["u-1"]


def test_list_omits_unset_filters() -> None:
    """Filters left None are not sent at all."""
    with vts(reply(200, [])) as (client, recorder):
        assert client.list_sessions(status="active", virtual_number="+12205550020") == []
    assert dict(recorder.requests[0].url.params) == {
        "status": "active",
        "virtual_number": "+12205550020",
        "limit": "20",
        "offset": "0",
    }


def paged(total: int) -> Handler:
    """A list endpoint holding ``total`` sessions, answering limit/offset like VTS."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        limit, offset = int(request.url.params["limit"]), int(request.url.params["offset"])
        end = min(offset + limit, total)
        objects = [session_json(f"u-{i}") for i in range(offset, end)]
        meta = {"total_count": total, "next": "more" if end < total else None}
        return reply(200, {"api_id": "a", "response": {"meta": meta, "objects": objects}})

    return handler


def test_list_pages_through_offsets() -> None:
    """A limit above 20 is fetched 20 at a time by offset, until VTS has no more."""
    with vts(paged(45)) as (client, recorder):
        sessions = client.list_sessions(limit=100)
    offsets = [r.url.params["offset"] for r in recorder.requests]
    assert offsets == ["0", "20", "40"]
    assert [s.session_uuid for s in sessions] == [f"u-{i}" for i in range(45)]


def test_list_stops_at_limit() -> None:
    """Paging stops once ``limit`` sessions are in hand."""
    with vts(paged(500)) as (client, recorder):
        sessions = client.list_sessions(limit=30, offset=10)
    assert [r.url.params["offset"] for r in recorder.requests] == ["10", "30"]
    assert [s.session_uuid for s in sessions] == [f"u-{i}" for i in range(10, 40)]


def test_list_never_fetches_more_than_five_pages() -> None:
    """Paging is capped at five requests even when VTS claims more pages."""
    with vts(paged(10_000)) as (client, recorder):
        sessions = client.list_sessions(limit=100)
    assert len(recorder.requests) == 5
    assert len(sessions) == 100


def test_list_drops_duplicates_across_pages() -> None:
    """A session seen on two pages (the list shifted) is returned once."""
    first = {"meta": {"next": "more"}, "objects": [session_json(f"u-{i}") for i in range(20)]}
    second = {"meta": {"next": None}, "objects": [session_json("u-19"), session_json("u-20")]}
    with vts(reply(200, first), reply(200, second)) as (client, _):
        sessions = client.list_sessions(limit=40)
    assert [s.session_uuid for s in sessions] == [f"u-{i}" for i in range(21)]


@pytest.mark.parametrize("limit", [0, 101])
def test_list_rejects_limit_out_of_range(limit: int) -> None:
    """limit outside 1..100 is a programming error: ValueError, nothing sent."""
    with vts(reply(200, [])) as (client, recorder), pytest.raises(ValueError, match="limit"):
        client.list_sessions(limit=limit)
    assert recorder.requests == []


def test_unreadable_list_answer_is_unavailable() -> None:
    """A garbled 2xx list is retryable: VtsUnavailable."""
    with vts(reply(200, {"api_id": "a"})) as (client, _), pytest.raises(VtsUnavailable):
        client.list_sessions()


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ("invalid first_party", "VTS rejected the request (400): invalid first_party"),
        (
            {"first_party": "invalid", "ring_timeout": ["too", "big"]},
            "VTS rejected the request (400): first_party: invalid; ring_timeout: too, big",
        ),
        (None, "VTS rejected the request (400)"),
    ],
)
def test_400_is_rejected_with_flattened_reason(error: object, expected: str) -> None:
    """A 400 is VtsRejected carrying VTS's error, string or object, flattened."""
    body = {"api_id": "a", "error": error} if error is not None else {"api_id": "a"}
    with vts(reply(400, body)) as (client, _), pytest.raises(VtsRejected) as caught:
        client.create_session({})
    assert type(caught.value) is VtsRejected
    assert (str(caught.value), caught.value.status) == (expected, 400)


def test_no_virtual_number_available_is_unavailable_not_rejected() -> None:
    """VTS's 400 "no virtual number available" is VtsNoNumberAvailable, a VtsUnavailable
    the create retries: a number may be freed at any moment."""
    body = {"api_id": "a", "error": "no virtual number available"}
    with vts(reply(400, body)) as (client, _), pytest.raises(VtsUnavailable) as caught:
        client.create_session({})
    assert isinstance(caught.value, VtsNoNumberAvailable)
    assert caught.value.status == 400
    assert "no virtual number available" in str(caught.value)


def test_rejection_reason_masks_numbers_vts_echoes() -> None:
    """A number VTS echoes in its error is masked in our exception."""
    body = {"api_id": "a", "error": {"second_party": "+12165554567 is not a valid number"}}
    with vts(reply(400, body)) as (client, _), pytest.raises(VtsRejected) as caught:
        client.create_session({"second_party": "+12165554567"})
    assert "***4567 is not a valid number" in caught.value.reason
    assert_no_numbers(chain_text(caught.value))


def test_non_json_error_body_is_left_out() -> None:
    """An error body that is not JSON does not leak into the reason."""
    with vts(reply(405, b"<html>405</html>")) as (client, _), pytest.raises(VtsRejected) as caught:
        client.create_session({})
    assert str(caught.value) == "VTS rejected the request (405)"


def test_401_is_rejected_and_names_the_credentials() -> None:
    """A 401 is VtsRejected and says which settings to check."""
    body = {"api_id": "a", "error": "authentication failed"}
    with vts(reply(401, body)) as (client, _), pytest.raises(VtsRejected) as caught:
        client.get_session("u-1")
    assert caught.value.status == 401
    assert "VTS_AUTH_TOKEN" in str(caught.value)
    assert "secret-token" not in str(caught.value)


def test_404_is_not_found() -> None:
    """A 404 is VtsNotFound, a VtsRejected."""
    with vts(reply(404, b"")) as (client, _), pytest.raises(VtsNotFound) as caught:
        client.get_session("nope")
    assert isinstance(caught.value, VtsRejected)
    assert caught.value.status == 404


@pytest.mark.parametrize(
    ("headers", "retry_after"),
    [({}, None), ({"Retry-After": "7"}, 7.0), ({"Retry-After": "soon"}, None)],
)
def test_429_is_unavailable_with_retry_after(
    headers: dict[str, str], retry_after: float | None
) -> None:
    """A 429 is VtsUnavailable carrying Retry-After in seconds when VTS gave one."""
    with vts(reply(429, b"", headers=headers)) as (client, _), pytest.raises(VtsUnavailable) as e:
        client.create_session({})
    assert type(e.value) is VtsUnavailable
    assert (e.value.status, e.value.retry_after) == (429, retry_after)


def test_429_retry_after_http_date() -> None:
    """A Retry-After given as an HTTP-date becomes seconds from now."""
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    answer = reply(429, b"", headers={"Retry-After": when})
    with vts(answer) as (client, _), pytest.raises(VtsUnavailable) as caught:
        client.create_session({})
    assert caught.value.retry_after is not None
    assert 110 <= caught.value.retry_after <= 120


def test_retry_after_date_in_the_past_is_zero() -> None:
    """A Retry-After date already passed means retry now."""
    answer = reply(429, b"", headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})
    with vts(answer) as (client, _), pytest.raises(VtsUnavailable) as caught:
        client.create_session({})
    assert caught.value.retry_after == 0.0


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_is_unavailable(status: int) -> None:
    """A 5xx is VtsUnavailable (retry), with Retry-After when given."""
    answer = reply(status, {"error": "+14155552345 broke"}, headers={"Retry-After": "3"})
    with vts(answer) as (client, _), pytest.raises(VtsUnavailable) as caught:
        client.update_session("u-1", {})
    assert type(caught.value) is VtsUnavailable
    assert (caught.value.status, caught.value.retry_after) == (status, 3.0)
    assert_no_numbers(str(caught.value))


@pytest.mark.parametrize(
    "exc_type", [httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.PoolTimeout]
)
def test_failure_before_sending_is_unavailable(exc_type: type[httpx2.TransportError]) -> None:
    """A request that never left (connect failure) is VtsUnavailable, not outcome-unknown."""
    with vts(raising(exc_type)) as (client, _), pytest.raises(VtsUnavailable) as caught:
        client.create_session({"first_party": "+14155552345"})
    assert type(caught.value) is VtsUnavailable
    assert caught.value.status is None
    assert isinstance(caught.value.__cause__, exc_type)


@pytest.mark.parametrize(
    "exc_type",
    [
        httpx2.ReadTimeout,
        httpx2.WriteTimeout,
        httpx2.ReadError,
        httpx2.WriteError,
        httpx2.RemoteProtocolError,
    ],
)
def test_failure_after_sending_is_outcome_unknown(exc_type: type[httpx2.TransportError]) -> None:
    """A request that may have reached VTS but got no answer is VtsOutcomeUnknown."""
    with vts(raising(exc_type)) as (client, _), pytest.raises(VtsOutcomeUnknown) as caught:
        client.create_session({"first_party": "+14155552345"})
    assert exc_type.__name__ in str(caught.value)
    assert isinstance(caught.value.__cause__, exc_type)


def test_list_transport_error_does_not_chain_url_with_numbers() -> None:
    """A failed list request (numbers in its URL) is raised without the httpx error."""
    with vts(raising(httpx2.ReadTimeout)) as (client, _), pytest.raises(VtsUnavailable) as caught:
        client.list_sessions(first_party="+14155552345", second_party="+12165554567")
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__
    assert_no_numbers(chain_text(caught.value))


def test_error_messages_never_hold_numbers() -> None:
    """No error from any kind of failure mentions a party's number."""
    answers: list[httpx2.Response | Handler] = [
        reply(400, {"error": "first_party 14155552345 invalid"}),
        reply(404, {"error": {"virtual_number": "+12205550020"}}),
        reply(429, b""),
        reply(500, b"+14155552345"),
        raising(httpx2.ConnectError),
        raising(httpx2.ReadTimeout),
    ]
    for answer in answers:
        with vts(answer) as (client, _), pytest.raises(VtsError) as caught:
            client.list_sessions(first_party="+14155552345")
        assert_no_numbers(str(caught.value))


def test_request_log_line() -> None:
    """Each request logs vts_request with method, action, status and duration, nothing else."""
    with vts(reply(201, created())) as (client, _), capture_logs() as logs:
        client.create_session({"first_party": "+14155552345", "second_party": "+12165554567"})
    (entry,) = logs
    assert entry.keys() == {"event", "log_level", "method", "action", "status", "duration_ms"}
    assert (entry["event"], entry["method"], entry["action"], entry["status"]) == (
        "vts_request",
        "POST",
        "create_session",
        201,
    )
    assert isinstance(entry["duration_ms"], int)


def test_request_log_line_of_failures_carries_ids_not_numbers() -> None:
    """Failed requests log a warning with the error class and session uuid, no numbers."""
    with vts(raising(httpx2.ReadTimeout)) as (client, _), capture_logs() as logs:
        with pytest.raises(VtsOutcomeUnknown):
            client.get_session("u-7")
        with pytest.raises(VtsOutcomeUnknown):
            client.list_sessions(first_party="+14155552345")
    assert [(e["log_level"], e["action"], e["error"]) for e in logs] == [
        ("warning", "get_session", "ReadTimeout"),
        ("warning", "list_sessions", "ReadTimeout"),
    ]
    assert logs[0]["vts_session_uuid"] == "u-7"
    assert_no_numbers(repr(logs))
    assert "secret-token" not in repr(logs)


class CountingLimiter(RateLimiter):
    """A RateLimiter that only counts the slots taken (its Redis is never contacted)."""

    def __init__(self) -> None:
        super().__init__(redis.Redis(unix_socket_path="/nonexistent"), "unused")
        self.entered = 0
        self.exited = 0

    @contextmanager
    def slot(self) -> Iterator[None]:
        self.entered += 1
        try:
            yield
        finally:
            self.exited += 1


def test_every_request_takes_a_limiter_slot() -> None:
    """Each request, including each list page and each failure, goes through the limiter."""
    limiter = CountingLimiter()
    recorder = Recorder(paged(30))
    with VtsClient(
        base_url=BASE,
        auth_id="MA123",
        auth_token="t",
        limiter=limiter,
        transport=httpx2.MockTransport(recorder),
    ) as client:
        client.list_sessions(limit=40)
        recorder.answers = [reply(503)]
        with pytest.raises(VtsUnavailable):
            client.expire_session("u-1")
    assert len(recorder.requests) == 3
    assert (limiter.entered, limiter.exited) == (3, 3)


def test_base_url_with_path_prefix() -> None:
    """A base URL with a path (a sandbox mounted under a prefix) keeps its prefix."""
    recorder = Recorder(reply(204))
    with VtsClient(
        base_url="http://127.0.0.1:9/sandbox",
        auth_id="MA123",
        auth_token="t",
        transport=httpx2.MockTransport(recorder),
    ) as client:
        client.expire_session("u-1")
    assert recorder.requests[0].url.path == f"/sandbox{SESSIONS}u-1/"
