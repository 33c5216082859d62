"""The app API's contract over real HTTP on loopback, with real Redis (no worker running)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx2
import pytest
import redis

from service.store.keys import Keys
from service.web.problems import Problem
from tests.conftest import new_numbers

PROBLEM = "application/problem+json"


def _type_name(problem: dict[str, Any]) -> str:
    """The name of an absolute problem type URL: what follows ``/problems/``."""
    url = httpx2.URL(problem["type"])
    assert url.is_absolute_url
    assert url.path.startswith("/problems/")
    return url.path.removeprefix("/problems/")


def _body(**extra: Any) -> dict[str, Any]:
    first, second = new_numbers()
    return {"first_party": first, "second_party": second, **extra}


def _assert_problem(response: httpx2.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert {"type", "title", "detail"} <= body.keys()
    return body


def _fields(body: dict[str, Any]) -> set[str]:
    return {error["field"] for error in body.get("errors", [])}


def test_create_answers_202_pending_with_location(api: httpx2.Client) -> None:
    """A valid request is accepted at once: 202, status pending, Location of the session."""
    response = api.post("/v1/sessions", json=_body(record=True, metadata={"ride": "r-1"}))
    assert response.status_code == 202
    session = response.json()
    assert session["status"] == "pending"
    assert session["record"] is True
    assert session["metadata"] == {"ride": "r-1"}
    assert response.headers["location"] == f"/v1/sessions/{session['id']}"
    assert api.get(response.headers["location"]).json()["id"] == session["id"]


def test_numbers_are_normalised_to_e164(api: httpx2.Client) -> None:
    """Numbers written with spaces and dashes come back as E.164."""
    response = api.post(
        "/v1/sessions", json={"first_party": "+1 415-555-2671", "second_party": "+44 20 7946 0958"}
    )
    assert response.status_code == 202
    assert response.json()["first_party"] == "+14155552671"
    assert response.json()["second_party"] == "+442079460958"


def test_create_queues_one_message_with_ids_only(
    api: httpx2.Client, redis_client: redis.Redis
) -> None:
    """The queued message names the session by id and carries no phone number."""
    body = _body()
    session_id = api.post("/v1/sessions", json=body).json()["id"]
    payloads: list[bytes] = redis_client.hvals(Keys.queue_messages("sessions"))  # type: ignore[assignment]
    assert len(payloads) == 1
    message = json.loads(payloads[0])
    assert message["actor_name"] == "create_session"
    assert message["args"] == [session_id]
    assert body["first_party"][1:].encode() not in payloads[0]
    assert body["second_party"][1:].encode() not in payloads[0]


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"second_party": "+14155552671"}, {"first_party"}),
        ({"first_party": "+14155552671", "second_party": "12"}, {"second_party"}),
        ({"first_party": "not a number", "second_party": "+14155552671"}, {"first_party"}),
        ({"first_party": "+14155552671", "second_party": "+1 (415) 555-2671"}, {"second_party"}),
        ({"first_party": 14155552671, "second_party": "+14155552672"}, {"first_party"}),
        ({"first_party": "+14155552671", "second_party": "+14155552672", "record": "yes"},
         {"record"}),
        ({"first_party": "+14155552671", "second_party": "+14155552672", "session_expiry": 5},
         {"session_expiry"}),
        ({"first_party": "+14155552671", "second_party": "+14155552672", "ring_timeout": 1.5},
         {"ring_timeout"}),
        ({"first_party": "+14155552671", "second_party": "+14155552672",
          "record_file_format": "ogg"}, {"record_file_format"}),
        ({"first_party": "+14155552671", "second_party": "+14155552672",
          "first_party_play_url": "ftp://x/y.mp3"}, {"first_party_play_url"}),
        ({"first_party": "+14155552671", "second_party": "+14155552672",
          "callback_url": "javascript:alert(1)"}, {"callback_url"}),
        ({"first_party": "+14155552671", "second_party": "+14155552672",
          "metadata": {"x": "y" * 3000}}, {"metadata"}),
        ({"first_party": "+14155552671", "second_party": "+14155552672", "colour": "red"},
         {"colour"}),
        ({"first_party": "+14155552671" * 10, "second_party": "+14155552672"}, {"first_party"}),
    ],
)  # fmt: skip
def test_invalid_fields_are_422_with_one_error_per_field(
    api: httpx2.Client, body: dict[str, Any], fields: set[str]
) -> None:
    """Each bad field is named in the problem's errors, and no number is echoed back."""
    response = api.post("/v1/sessions", json=body)
    problem = _assert_problem(response, 422)
    assert _fields(problem) == fields
    assert "4155552671" not in response.text


def test_several_bad_fields_are_all_reported(api: httpx2.Client) -> None:
    """Every bad field is reported at once, not only the first."""
    response = api.post("/v1/sessions", json={"first_party": "x", "record": 1, "colour": 2})
    assert _fields(_assert_problem(response, 422)) == {
        "first_party", "second_party", "record", "colour"
    }  # fmt: skip


@pytest.mark.parametrize("raw", [b"{", b"[1, 2", b"\xff\xfe", b"", b"nul"])
def test_malformed_json_is_400(api: httpx2.Client, raw: bytes) -> None:
    """A body that is not JSON is a 400 problem."""
    response = api.post("/v1/sessions", content=raw, headers={"content-type": "application/json"})
    _assert_problem(response, 400)


@pytest.mark.parametrize("raw", [b"[]", b'"text"', b"42", b"null"])
def test_json_that_is_not_an_object_is_422(api: httpx2.Client, raw: bytes) -> None:
    """JSON that is not an object is a 422 problem."""
    response = api.post("/v1/sessions", content=raw, headers={"content-type": "application/json"})
    _assert_problem(response, 422)


def test_non_json_content_type_is_415(api: httpx2.Client) -> None:
    """A form body is refused with 415."""
    response = api.post("/v1/sessions", data={"first_party": "+14155552671"})
    _assert_problem(response, 415)


def test_json_content_type_with_parameters_and_any_case_is_accepted(api: httpx2.Client) -> None:
    """``Application/JSON; charset=utf-8`` is JSON: media types are case-insensitive and
    their parameters are not part of the type."""
    raw = json.dumps({"first_party": "+14155552671", "second_party": "+442079460958"})
    response = api.post(
        "/v1/sessions", content=raw, headers={"content-type": "Application/JSON; charset=utf-8"}
    )
    assert response.status_code == 202, response.text


def test_oversized_body_is_413_from_content_length(api: httpx2.Client) -> None:
    """A declared length over 64 KiB is refused without reading the body."""
    response = api.post(
        "/v1/sessions",
        content=b"{" + b" " * 70_000 + b"}",
        headers={"content-type": "application/json"},
    )
    _assert_problem(response, 413)


def test_oversized_chunked_body_is_413(api: httpx2.Client) -> None:
    """A chunked body is cut off with 413 once it passes 64 KiB."""

    def chunks() -> Any:
        yield b'{"metadata": "'
        for _ in range(100):
            yield b"x" * 1024
        yield b'"}'

    response = api.post(
        "/v1/sessions", content=chunks(), headers={"content-type": "application/json"}
    )
    _assert_problem(response, 413)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-key-0000000000"}, {"Authorization": "Basic abc"},
     {"Authorization": "Bearer"}],
)  # fmt: skip
def test_missing_or_invalid_key_is_401(web_url: str, headers: dict[str, str]) -> None:
    """Without a valid bearer key every /v1 route is 401 with WWW-Authenticate."""
    for method, path in [("POST", "/v1/sessions"), ("GET", "/v1/sessions"),
                         ("GET", "/v1/sessions/ses_" + "0" * 32)]:  # fmt: skip
        response = httpx2.request(method, web_url + path, headers=headers, json={})
        _assert_problem(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("path", ["/v1/sessions/ses_" + "0" * 32, "/v1/sessions/../../etc"])
def test_unknown_session_is_404(api: httpx2.Client, path: str) -> None:
    """An unknown or malformed id is 404 on every session route."""
    _assert_problem(api.get(path), 404)
    if path.count("/") == 3:
        _assert_problem(api.delete(path), 404)
        _assert_problem(api.patch(path, json={"record": True}), 404)
        _assert_problem(api.get(path + "/events"), 404)


def test_unknown_route_and_method_are_problems(api: httpx2.Client) -> None:
    """Unknown routes are 404 and wrong methods 405, both problem+json."""
    _assert_problem(api.get("/v1/nothing"), 404)
    _assert_problem(api.put("/v1/sessions", json={}), 405)


def test_same_idempotency_key_and_body_returns_the_same_session(api: httpx2.Client) -> None:
    """A retried request with the same key gets the same session, flagged as a replay."""
    body = _body()
    first = api.post("/v1/sessions", json=body, headers={"Idempotency-Key": "k-1"})
    again = api.post("/v1/sessions", json=body, headers={"Idempotency-Key": "k-1"})
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"


def test_idempotency_key_with_another_body_is_422(api: httpx2.Client) -> None:
    """Reusing a key for a different request is 422 (409 is kept for one still in flight)."""
    api.post("/v1/sessions", json=_body(), headers={"Idempotency-Key": "k-2"})
    response = api.post("/v1/sessions", json=_body(), headers={"Idempotency-Key": "k-2"})
    problem = _assert_problem(response, 422)
    assert _type_name(problem) == "idempotency-key-reused"


def test_invalid_idempotency_key_is_400(api: httpx2.Client) -> None:
    """A key with control characters or over 255 characters is refused."""
    response = api.post("/v1/sessions", json=_body(), headers={"Idempotency-Key": "x" * 300})
    _assert_problem(response, 400)


def test_twenty_concurrent_requests_with_one_key_create_one_session(
    web_url: str, redis_client: redis.Redis
) -> None:
    """20 simultaneous identical requests with one key: one session, one queued create."""
    body = _body()
    headers = {"Authorization": "Bearer " + "test-key-" + "0" * 16, "Idempotency-Key": "k-20"}

    def post(_: int) -> str:
        with httpx2.Client(base_url=web_url, headers=headers) as client:
            response = client.post("/v1/sessions", json=body)
            assert response.status_code == 202
            return str(response.json()["id"])

    with ThreadPoolExecutor(20) as pool:
        ids = set(pool.map(post, range(20)))
    assert len(ids) == 1
    assert redis_client.zcard(Keys.index()) == 1
    assert redis_client.hlen(Keys.queue_messages("sessions")) == 1


def test_list_is_newest_first_with_cursor_pages(api: httpx2.Client) -> None:
    """Listing pages through every session once, newest first."""
    created = [api.post("/v1/sessions", json=_body()).json()["id"] for _ in range(7)]
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
        page = api.get("/v1/sessions", params=params).json()
        seen += [s["id"] for s in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(created))


def test_list_filters_by_status(api: httpx2.Client) -> None:
    """The status filter uses its own index."""
    api.post("/v1/sessions", json=_body())
    assert len(api.get("/v1/sessions", params={"status": "pending"}).json()["data"]) == 1
    assert api.get("/v1/sessions", params={"status": "active"}).json()["data"] == []


@pytest.mark.parametrize(
    "params",
    [{"status": "open"}, {"limit": "0"}, {"limit": "101"}, {"limit": "x"},
     {"cursor": "!!!"}, {"cursor": "bm90LWEtY3Vyc29y"}, {"colour": "red"}],
)  # fmt: skip
def test_bad_list_parameters_are_422(api: httpx2.Client, params: dict[str, str]) -> None:
    """Bad filters, limits and cursors are named in the problem."""
    _assert_problem(api.get("/v1/sessions", params=params), 422)


@pytest.mark.parametrize(
    "body",
    [{}, {"first_party": "+14155552671"}, {"initiate_call_to_first_party": True},
     {"ring_timeout": "60"}, {"record": None}],
)  # fmt: skip
def test_bad_patch_is_422(api: httpx2.Client, body: dict[str, Any]) -> None:
    """A change request must name at least one changeable option, correctly typed."""
    session_id = api.post("/v1/sessions", json=_body()).json()["id"]
    _assert_problem(api.patch(f"/v1/sessions/{session_id}", json=body), 422)


def test_timeline_starts_with_the_request(api: httpx2.Client) -> None:
    """A new session's timeline holds its request."""
    session_id = api.post("/v1/sessions", json=_body()).json()["id"]
    events = api.get(f"/v1/sessions/{session_id}/events").json()["data"]
    assert [e["type"] for e in events] == ["requested"]


def test_health_and_openapi_need_no_key(web_url: str) -> None:
    """Probes and the OpenAPI document are public."""
    assert httpx2.get(web_url + "/healthz").json() == {"status": "ok"}
    assert httpx2.get(web_url + "/readyz").json() == {"status": "ready"}
    assert httpx2.get(web_url + "/openapi.json").json()["openapi"] == "3.1.0"


def test_request_id_is_echoed(api: httpx2.Client) -> None:
    """A sane incoming X-Request-ID is kept; a hostile one is replaced."""
    assert (
        api.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"]
        == "abc-123"
    )
    replaced = api.get("/healthz", headers={"X-Request-ID": "a b\tc"}).headers["x-request-id"]
    assert replaced != "a b\tc"


def test_problem_types_are_absolute_urls(api: httpx2.Client) -> None:
    """A problem's type is an absolute URL under the service's public address, not a
    relative path."""
    problem = _assert_problem(api.get("/v1/sessions/ses_" + "0" * 32), 404)
    assert _type_name(problem) == "not-found"


def test_a_problem_type_url_leads_to_what_it_means(api: httpx2.Client) -> None:
    """Following a problem's type gives a page saying what it means, without an API key;
    an unknown type is a 404 problem."""
    problem = _assert_problem(api.get("/v1/sessions/ses_" + "0" * 32), 404)
    page = api.get(httpx2.URL(problem["type"]).path, headers={"Authorization": ""})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "No such session or recording" in page.text
    _assert_problem(api.get("/problems/no-such-thing"), 404)


@pytest.mark.parametrize(
    "status", [400, 401, 404, 405, 409, 413, 415, 416, 422, 429, 500, 503, 504]
)
def test_every_problem_status_has_its_own_title(status: int) -> None:
    """No problem the service answers is titled with the generic "Error"."""
    assert Problem(status, "x").body("http://x")["title"] != "Error"


def test_range_problem_is_titled_range_not_satisfiable() -> None:
    """The 416 problem says what it is."""
    assert Problem(416, "x").body("http://x")["title"] == "Range not satisfiable"


def test_honoured_wait_preference_is_acknowledged(api: httpx2.Client) -> None:
    """Prefer: wait=N is answered with Preference-Applied: wait=N (capped at 30)."""
    response = api.post("/v1/sessions", json=_body(), headers={"Prefer": "wait=1"})
    assert response.status_code == 202
    assert response.headers["preference-applied"] == "wait=1"
    plain = api.post("/v1/sessions", json=_body())
    assert "preference-applied" not in plain.headers


def test_patch_accepts_merge_patch_json(api: httpx2.Client) -> None:
    """PATCH takes application/merge-patch+json (RFC 7396) as well as application/json."""
    session_id = api.post("/v1/sessions", json=_body()).json()["id"]
    response = api.patch(
        f"/v1/sessions/{session_id}",
        content=json.dumps({"session_expiry": 900}),
        headers={"content-type": "application/merge-patch+json"},
    )
    assert response.status_code == 202, response.text


@pytest.mark.parametrize("field", ["first_party", "second_party"])
def test_patch_of_a_party_says_it_cannot_be_changed(api: httpx2.Client, field: str) -> None:
    """Changing a party is refused as such, not as an unknown field."""
    session_id = api.post("/v1/sessions", json=_body()).json()["id"]
    response = api.patch(f"/v1/sessions/{session_id}", json={field: "+14155550100"})
    problem = _assert_problem(response, 422)
    assert problem["errors"] == [
        {"field": field, "message": "cannot be changed; create a new session instead"}
    ]


def test_number_without_plus_says_the_country_code_is_missing(api: httpx2.Client) -> None:
    """A national number written without + and country code is named as such."""
    response = api.post(
        "/v1/sessions", json={"first_party": "4155552671", "second_party": "+14155552672"}
    )
    problem = _assert_problem(response, 422)
    [error] = problem["errors"]
    assert error["field"] == "first_party"
    assert "missing country code" in error["message"]
    assert "4155552671" not in response.text


def _nested(levels: int) -> str:
    return "[" * levels + "]" * levels


@pytest.mark.parametrize(
    ("metadata", "status"),
    [('{"x": ' + "1" * 31 + "}", 400), ('{"x": ' + "1" * 30 + "}", 202),
     ('{"x": 0.' + "1" * 29 + "}", 400), ('{"x": 0.5}', 202),
     ('{"x": ' + _nested(31) + "}", 400), ('{"x": ' + _nested(30) + "}", 202)],
)  # fmt: skip
def test_strict_json_bounds_hold_for_well_formed_bodies(
    api: httpx2.Client, metadata: str, status: int
) -> None:
    """Valid JSON past our bounds (31-digit numbers, nesting past 32 levels) is 400 even
    when the typed decoder could read it; just within them it is accepted."""
    first, second = new_numbers()
    raw = f'{{"first_party": "{first}", "second_party": "{second}", "metadata": {metadata}}}'
    response = api.post("/v1/sessions", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
