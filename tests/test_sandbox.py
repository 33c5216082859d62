"""The VTS sandbox, served on loopback and driven over real HTTP."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from typing import Any

import httpx2
import pytest

from devkit.sandbox.server import SandboxConfig, create_sandbox_app, main, number_range
from service.phones import mask_text
from tests.conftest import http_client
from tests.servers import serve

AUTH = ("MAFAKEAUTHID0000", "sandbox-token")
BASE = f"/v1/Account/{AUTH[0]}/Masking/Session"
A, B, C = "+14155552345", "+12165554567", "+16175551234"
START = datetime(2024, 1, 3, 13, 35, tzinfo=UTC).timestamp()


class Clock:
    """A clock the test moves by hand; the sandbox reads it from its server thread."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


Start = Callable[..., httpx2.Client]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@contextmanager
def sandboxes(clock: Clock, timeout: float = 10.0) -> Iterator[Start]:
    """``start(**overrides)`` serves a sandbox with those config overrides and returns a
    client authenticated to it; every one started stops when the block ends."""
    with ExitStack() as stack:

        def start(**overrides: Any) -> httpx2.Client:
            app = create_sandbox_app(SandboxConfig(*AUTH, **overrides), clock)
            url = stack.enter_context(serve(app))
            return stack.enter_context(http_client(url, auth=AUTH, timeout=timeout))

        yield start


@pytest.fixture
def start(clock: Clock) -> Iterator[Start]:
    with sandboxes(clock) as start:
        yield start


@pytest.fixture
def client(start: Start) -> httpx2.Client:
    return start()


def create(client: httpx2.Client, **fields: object) -> httpx2.Response:
    return client.post(BASE, json={"first_party": A, "second_party": B, **fields})


def listed(client: httpx2.Client, **params: str) -> list[str]:
    """The uuids that list answers, in its order."""
    objects = client.get(BASE, params=params).json()["response"]["objects"]
    return [session["session_uuid"] for session in objects]


def assert_refused(response: httpx2.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"api_id", "error"}
    assert all(word in body["error"] for word in words), body["error"]
    assert mask_text(body["error"]) == body["error"], "the error holds something like a number"


def test_create_envelope_answers_real_json_types(client: httpx2.Client) -> None:
    """In the envelope dialect, create answers 201 with the session in real JSON types."""
    response = create(client)
    assert response.status_code == 201
    body = response.json()
    assert body["message"] == "Session created"
    assert body["virtual_number"] == "+14152000000"
    session = body["session"]
    assert session["session_uuid"] == body["session_uuid"]
    assert (session["first_party"], session["virtual_number"]) == (A[1:], "14152000000")
    assert session["record"] is False
    assert session["session_expiry"] == 3600
    assert session["callback_url"] == ""
    assert session["interaction"] is None
    assert session["total_call_amount"] == 0
    assert session["status"] == "active"
    assert session["created_time"] == "2024-01-03 13:35:00.000000 +0000 UTC"
    assert session["modified_time"] == session["created_time"]


def test_create_bare_answers_every_value_as_a_string(start: Start) -> None:
    """In the bare dialect, create answers the session at top level, every value a string."""
    body = create(start(dialect="bare"), ring_timeout=45).json()
    assert all(isinstance(value, str) for value in body.values())
    assert (body["first_party"], body["virtual_number"]) == (A, "+14152000000")
    assert (body["record"], body["ring_timeout"], body["callback_url"]) == ("false", "45", "null")
    assert (body["total_call_amount"], body["interaction"]) == ("0.000", "{}")
    assert body["created_time"] == "2024-01-03 13:35:00"
    assert body["expiry_time"] == "2024-01-03 14:35:00"
    assert body["modified_time"] == "null"


def test_create_accepts_loose_but_valid_forms(client: httpx2.Client) -> None:
    """Numbers without '+', "true"/"false" and digit strings are accepted as VTS does."""
    fields = {"first_party": A[1:], "second_party": B, "record": "true", "session_expiry": "600"}
    session = client.post(BASE, json=fields).json()["session"]
    assert (session["first_party"], session["record"], session["session_expiry"]) == (
        A[1:],
        True,
        600,
    )


@pytest.mark.parametrize(
    ("fields", "word"),
    [
        ({"first_party": None}, "first_party"),
        ({"first_party": "12345"}, "first_party"),
        ({"second_party": 12165554567}, "second_party"),
        ({"second_party": A[1:]}, "different"),
        ({"record": "yes"}, "record"),
        ({"initiate_call_to_first_party": 1}, "initiate_call_to_first_party"),
        ({"session_expiry": 3600.0}, "session_expiry"),
        ({"session_expiry": "-60"}, "session_expiry"),
        ({"session_expiry": "9" * 5000}, "session_expiry"),
        ({"call_time_limit": 0}, "call_time_limit"),
        ({"ring_timeout": True}, "ring_timeout"),
        ({"ring_timeout": 301}, "ring_timeout"),
        ({"record_file_format": "ogg"}, "record_file_format"),
        ({"callback_url": "ftp://example.com/x"}, "callback_url"),
        ({"first_party_play_url": "/relative.mp3"}, "first_party_play_url"),
        ({"recording_callback_method": "PUT"}, "recording_callback_method"),
        ({"colour": "blue"}, "colour"),
        ({A: "the name is a number"}, "not shown"),
    ],
)
def test_create_rejects_what_vts_rejects(
    client: httpx2.Client, fields: dict[str, object], word: str
) -> None:
    """Each invalid field is a 400 that names the field and never repeats a number."""
    assert_refused(create(client, **fields), 400, word)


def test_create_requires_both_parties(client: httpx2.Client) -> None:
    """A body without parties is refused, naming both."""
    assert_refused(client.post(BASE, json={}), 400, "first_party is required", "second_party")


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"{not json", "application/json"),
        (b"[1, 2]", "application/json"),
        (b"first_party=14155552345&second_party=12165554567", "application/x-www-form-urlencoded"),
    ],
)
def test_create_takes_only_a_json_object(
    client: httpx2.Client, content: bytes, content_type: str
) -> None:
    """A body that is not a JSON object sent as JSON is a 400."""
    response = client.post(BASE, content=content, headers={"content-type": content_type})
    assert_refused(response, 400, "JSON")


@pytest.mark.parametrize(
    ("auth", "path"),
    [
        ((AUTH[0], "wrong-token"), BASE),
        (("MAOTHERACCOUNT00", AUTH[1]), BASE),
        (AUTH, BASE.replace(AUTH[0], "MAOTHERACCOUNT00")),
        (None, BASE),
        ((AUTH[0], "wrong-token"), "/_sandbox/stats"),
    ],
)
def test_bad_credentials_are_401(
    client: httpx2.Client, auth: tuple[str, str] | None, path: str
) -> None:
    """Wrong token, wrong user, another account's path or no auth at all: 401."""
    response = httpx2.get(str(client.base_url) + path, auth=auth)
    assert_refused(response, 401, "authentication failed")
    assert response.headers["www-authenticate"].startswith("Basic")


def test_get_answers_the_session_or_404(client: httpx2.Client) -> None:
    """Get answers the session in an envelope, with or without a trailing slash; 404 if unknown."""
    uuid = create(client).json()["session_uuid"]
    for path in (f"{BASE}/{uuid}", f"{BASE}/{uuid}/"):
        response = client.get(path)
        assert response.status_code == 200
        assert response.json()["response"]["session_uuid"] == uuid
    assert_refused(client.get(f"{BASE}/no-such-session"), 404, "not found")


def test_get_in_bare_dialect(start: Start) -> None:
    """Get in the bare dialect answers the stringly session at top level."""
    client = start(dialect="bare")
    uuid = create(client).json()["session_uuid"]
    body = client.get(f"{BASE}/{uuid}").json()
    assert (body["session_uuid"], body["session_expiry"]) == (uuid, "3600")


def test_list_filters_by_party_number_and_status(client: httpx2.Client) -> None:
    """List filters by parties (with or without '+'), virtual number and status."""
    first = create(client).json()
    second = create(client, first_party=C).json()["session_uuid"]
    client.delete(f"{BASE}/{first['session_uuid']}")

    assert (
        len(
            listed(
                client,
            )
        )
        == 2
    )
    assert listed(client, first_party=A[1:]) == [first["session_uuid"]]
    assert listed(client, second_party=B, status="active") == [second]
    assert listed(client, status="expired") == [first["session_uuid"]]
    assert listed(client, virtual_number=first["virtual_number"]) == [first["session_uuid"]]


def test_list_pages_newest_first(client: httpx2.Client, clock: Clock) -> None:
    """List pages newest first, 20 at most, with next and previous links that work."""
    made = []
    for _ in range(25):
        made.append(create(client).json()["session_uuid"])
        clock.advance(1)
    page = client.get(BASE + "/").json()["response"]
    assert [s["session_uuid"] for s in page["objects"]] == made[::-1][:20]
    assert page["meta"]["total_count"] == 25
    assert page["meta"]["previous"] is None
    second = client.get(page["meta"]["next"]).json()["response"]
    assert [s["session_uuid"] for s in second["objects"]] == made[::-1][20:]
    assert second["meta"]["next"] is None
    assert "offset=0" in second["meta"]["previous"]


def test_list_filters_by_creation_time(client: httpx2.Client, clock: Clock) -> None:
    """created_time__gte and __lte bound the creation time, in either accepted format."""
    early = create(client).json()["session_uuid"]
    clock.advance(3600)
    late = create(client).json()["session_uuid"]

    assert listed(client, created_time__gte="2024-01-03 14:00") == [late]
    assert listed(client, created_time__lte="2024-01-03 13:35:00") == [early]
    assert listed(client, created_time__gte="2024-01-03 13:35:00") == [late, early]


def test_list_in_bare_dialect(start: Start) -> None:
    """The bare list puts meta and objects at top level, stringly."""
    client = start(dialect="bare")
    create(client)
    body = client.get(BASE).json()
    assert body["meta"] == {
        "limit": "20",
        "offset": "0",
        "total_count": "1",
        "next": "null",
        "previous": "null",
    }
    assert body["objects"][0]["record"] == "false"


@pytest.mark.parametrize(
    ("params", "word"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "21"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"offset": "-1"}, "offset"),
        ({"offset": "9" * 5000}, "offset"),
        ({"status": "done"}, "status"),
        ({"created_time__gte": "2024-01-03T13:35:00"}, "created_time__gte"),
        ({"first_party": "123"}, "first_party"),
        ({"created_time_gte": "2024-01-03 13:35"}, "created_time_gte"),
    ],
)
def test_list_rejects_bad_queries(client: httpx2.Client, params: dict[str, str], word: str) -> None:
    """A malformed or unknown list parameter is a 400 naming it."""
    assert_refused(client.get(BASE, params=params), 400, word)


def test_update_changes_options_and_restarts_expiry(client: httpx2.Client, clock: Clock) -> None:
    """Update changes options and counts a new session_expiry from now."""
    uuid = create(client).json()["session_uuid"]
    clock.advance(100)
    response = client.post(f"{BASE}/{uuid}/", json={"session_expiry": 600, "record": True})
    assert response.status_code == 200
    body = response.json()
    assert body["message"] == "Session updated"
    assert (body["session"]["record"], body["session"]["session_expiry"]) == (True, 600)
    assert body["session"]["expiry_time"].startswith("2024-01-03 13:46:40")
    assert body["session"]["modified_time"].startswith("2024-01-03 13:36:40")


def test_update_refuses_fixed_fields_unknown_and_expired_sessions(client: httpx2.Client) -> None:
    """Parties and initiate_call_to_first_party are fixed; unknown is 404; expired is 400."""
    uuid = create(client).json()["session_uuid"]
    path = f"{BASE}/{uuid}"
    assert_refused(client.post(path, json={"second_party": C}), 400, "second_party cannot")
    assert_refused(client.post(path, json={"initiate_call_to_first_party": True}), 400, "cannot")
    assert_refused(client.post(path, json={"ring_timeout": 4}), 400, "ring_timeout")
    assert_refused(client.post(f"{BASE}/unknown", json={}), 404, "not found")
    client.delete(path)
    assert_refused(client.post(path, json={"record": True}), 400, "expired")


def test_expire_frees_the_number_and_is_idempotent(start: Start) -> None:
    """Expire answers 204 with no body, frees the number, and again 204; unknown is 404."""
    client = start(number_pool=number_range(1))
    first = create(client).json()
    path = f"{BASE}/{first['session_uuid']}"
    response = client.delete(path)
    assert (response.status_code, response.content) == (204, b"")
    assert client.get(path).json()["response"]["status"] == "expired"
    assert client.delete(path + "/").status_code == 204
    assert create(client).json()["virtual_number"] == first["virtual_number"]
    assert_refused(client.delete(f"{BASE}/unknown"), 404, "not found")


def test_sessions_expire_by_time(start: Start, clock: Clock) -> None:
    """Once session_expiry has passed the session reads expired and its number is free."""
    client = start(number_pool=number_range(1))
    uuid = create(client, session_expiry=60).json()["session_uuid"]
    assert_refused(create(client, first_party=C), 400, "no virtual number available")
    clock.advance(60)
    assert client.get(f"{BASE}/{uuid}").json()["response"]["status"] == "expired"
    assert create(client, first_party=C).status_code == 201


def test_pool_exhaustion_is_400(start: Start) -> None:
    """With every pool number held, create is refused and no session is made."""
    client = start(number_pool=number_range(2))
    numbers = {create(client).json()["virtual_number"] for _ in range(2)}
    assert numbers == {"+14152000000", "+14152000001"}
    assert_refused(create(client), 400, "no virtual number available")
    assert client.get("/_sandbox/stats").json()["sessions_created"] == 2


def test_rate_limit_answers_429_over_the_window(start: Start, clock: Clock) -> None:
    """Over rate_limit requests in rate_window seconds is 429 with Retry-After, until it slides."""
    client = start(rate_limit=3, rate_window=5.0)
    assert [client.get(BASE).status_code for _ in range(3)] == [200, 200, 200]
    clock.advance(2)
    response = client.get(BASE)
    assert_refused(response, 429, "too many requests")
    assert response.headers["retry-after"] == "3"
    clock.advance(5)
    assert client.get(BASE).status_code == 200
    stats = client.get("/_sandbox/stats").json()
    assert (stats["rate_limited"], stats["max_in_window"]) == (1, 4)


def test_injected_errors_come_before_anything_is_done(client: httpx2.Client) -> None:
    """error_rate 1 answers error_status and creates nothing."""
    faults = client.put("/_sandbox/faults", json={"error_rate": 1, "error_status": 502})
    assert faults.status_code == 200
    assert_refused(create(client), 502, "injected")
    stats = client.get("/_sandbox/stats").json()
    assert stats["sessions_created"] == 0
    assert stats["injected"] == {"create": {"error": 1}}
    assert stats["faults"] == {"error": 1}
    assert stats["answered"] == {"create": {"502": 1}}


def test_error_paths_limit_faults_to_some_actions(client: httpx2.Client) -> None:
    """Faults apply only to the actions in error_paths."""
    client.put("/_sandbox/faults", json={"error_rate": 1, "error_paths": ["get"]})
    uuid = create(client).json()["session_uuid"]
    assert_refused(client.get(f"{BASE}/{uuid}"), 503, "injected")
    assert client.get(BASE).status_code == 200


@pytest.mark.parametrize(("retry_after", "header"), [(None, None), (7, "7"), ("auto", "1")])
def test_injected_429_with_or_without_retry_after(
    client: httpx2.Client, retry_after: int | str | None, header: str | None
) -> None:
    """rate_429 answers 429 whatever the rate, with the configured Retry-After or none."""
    client.put("/_sandbox/faults", json={"rate_429": 1, "retry_after": retry_after})
    response = client.get(BASE)
    assert_refused(response, 429, "too many requests")
    assert response.headers.get("retry-after") == header
    assert client.get("/_sandbox/stats").json()["rate_limited"] == 0


def test_faults_are_reproducible_from_their_seed(client: httpx2.Client) -> None:
    """The same seed gives the same run of injected faults."""

    def run() -> list[int]:
        client.put("/_sandbox/faults", json={"error_rate": 0.5, "seed": 42})
        return [client.get(BASE).status_code for _ in range(20)]

    first = run()
    assert first == run()
    assert {200, 503} == set(first)


def test_latency_delays_the_answer(client: httpx2.Client) -> None:
    """latency_ms holds every API answer at least that long."""
    client.put("/_sandbox/faults", json={"latency_ms": 200})
    began = time.monotonic()
    assert client.get(BASE).status_code == 200
    assert time.monotonic() - began >= 0.2


def test_stall_after_create_leaves_a_session_the_client_never_heard_of(
    client: httpx2.Client,
) -> None:
    """A stalled create times the client out, yet the session exists at VTS."""
    client.put("/_sandbox/faults", json={"stall_after_create": 30})
    with pytest.raises(httpx2.ReadTimeout):
        client.post(BASE, json={"first_party": A, "second_party": B}, timeout=0.3)
    sessions = client.get("/_sandbox/sessions").json()["sessions"]
    assert [(s["first_party"], s["second_party"], s["status"]) for s in sessions] == [
        (A, B, "active")
    ]
    assert client.get("/_sandbox/stats").json()["injected"] == {"create": {"stall": 1}}


def test_faults_can_be_read_cleared_and_are_validated(client: httpx2.Client) -> None:
    """GET shows the faults, DELETE clears them, and bad settings are 400."""
    client.put("/_sandbox/faults", json={"error_rate": 0.25, "error_paths": ["list"]})
    faults = client.get("/_sandbox/faults").json()
    assert (faults["error_rate"], faults["error_paths"]) == (0.25, ["list"])
    assert client.delete("/_sandbox/faults").status_code == 204
    assert client.get("/_sandbox/faults").json()["error_rate"] == 0
    for bad in ({"error_rate": 2}, {"error_paths": ["call"]}, {"typo": 1}, [1]):
        assert client.put("/_sandbox/faults", json=bad).status_code == 400


def test_reset_clears_sessions_stats_and_faults(client: httpx2.Client) -> None:
    """Reset leaves the sandbox as it started."""
    create(client)
    client.put("/_sandbox/faults", json={"rate_429": 1})
    assert client.post("/_sandbox/reset").status_code == 204
    assert client.get("/_sandbox/sessions").json() == {"sessions": []}
    assert client.get("/_sandbox/stats").json()["received"] == {}
    assert client.get("/_sandbox/faults").json()["rate_429"] == 0


def test_stats_count_requests_per_action(client: httpx2.Client) -> None:
    """Stats count requests received and answers by status, per action."""
    uuid = create(client).json()["session_uuid"]
    client.get(f"{BASE}/{uuid}")
    client.get(f"{BASE}/missing")
    client.delete(f"{BASE}/{uuid}")
    stats = client.get("/_sandbox/stats").json()
    assert stats["received"] == {"create": 1, "get": 2, "expire": 1}
    assert stats["answered"]["get"] == {"200": 1, "404": 1}


def test_unknown_routes_answer_in_vts_error_shape(client: httpx2.Client) -> None:
    """Routing's 404 and 405 carry an api_id and an error, like every VTS answer."""
    assert_refused(client.get(f"/v1/Account/{AUTH[0]}/Call"), 404, "Not Found")
    assert_refused(client.put(BASE, json={}), 405, "Method Not Allowed")


def test_config_rejects_an_invalid_pool_without_showing_it() -> None:
    """A pool number that is not valid E.164 is refused by its index, not its value."""
    with pytest.raises(ValueError, match=r"number_pool\[1\]") as caught:
        SandboxConfig(*AUTH, number_pool=("+14152000000", "+1202555"))
    assert "202555" not in str(caught.value)
    assert len(set(SandboxConfig(*AUTH).number_pool)) == 50


def test_main_refuses_a_bad_pool_size() -> None:
    """The command line refuses a pool size out of range before serving anything."""
    with pytest.raises(SystemExit):
        main(["--auth-id", AUTH[0], "--auth-token", AUTH[1], "--pool-size", "0"])
