"""Simulated calls in the VTS sandbox: their events, the session totals, signed delivery."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx2
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from devkit.sandbox.server import main
from service.vts.dialects import parse_session
from service.vts.signatures import new_nonce, verify_v3
from tests.servers import free_port, serve
from tests.test_sandbox import AUTH, BASE, A, B, Clock, sandboxes

HOOK = "/hooks/session/?tenant=t-1"
ENDED = ("Hangup", "Complete", "Failed")
Event = dict[str, str]


@dataclass
class Received:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    form: dict[str, str]
    raw_query: str

    @property
    def event(self) -> dict[str, str]:
        """The event's fields, without the callback URL's own query."""
        if self.method == "POST":
            return self.form
        return {name: value for name, value in self.query.items() if name != "tenant"}


@dataclass
class Receiver:
    """An app's callback endpoint that records every request it gets."""

    url: str = ""
    status: int = 200
    stall_first: float = 0.0  # hold the first request this long (or until the client leaves)
    requests: list[Received] = field(default_factory=list)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self.receive, methods=["GET", "POST"])])

    async def receive(self, request: Request) -> Response:
        form = await request.form() if request.method == "POST" else {}
        self.requests.append(
            Received(
                request.method,
                request.url.path,
                dict(request.query_params),
                dict(request.headers),
                {name: str(value) for name, value in form.items()},
                request.url.query,
            )
        )
        if self.stall_first and len(self.requests) == 1:
            with suppress(TimeoutError):
                async with asyncio.timeout(self.stall_first):
                    while (await request.receive())["type"] != "http.disconnect":
                        pass
        return Response(status_code=self.status)

    @property
    def events(self) -> list[Event]:
        return [received.event for received in self.requests]

    @property
    def callback_url(self) -> str:
        return self.url + HOOK


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    with serve(receiver.app()) as url:
        receiver.url = url
        yield receiver


Start = Callable[..., httpx2.Client]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def start(clock: Clock, receiver: Receiver) -> Iterator[Start]:
    with sandboxes(clock, timeout=20) as start:
        yield start


@pytest.fixture
def client(start: Start) -> httpx2.Client:
    return start()


def new_session(client: httpx2.Client, receiver: Receiver, **fields: object) -> str:
    body = {"first_party": A, "second_party": B, "callback_url": receiver.callback_url, **fields}
    response = client.post(BASE, json=body)
    assert response.status_code == 201, response.text
    uuid: str = response.json()["session_uuid"]
    return uuid


def simulate(client: httpx2.Client, session_uuid: str, **body: object) -> dict[str, Any]:
    response = client.post(f"/_sandbox/sessions/{session_uuid}/calls", json=body)
    assert response.status_code == 202, response.text
    answer: dict[str, Any] = response.json()
    return answer


def drain(client: httpx2.Client) -> None:
    response = client.post("/_sandbox/drain", params={"timeout": "15"})
    assert response.json() == {"pending": 0}


def generated(client: httpx2.Client, session_uuid: str) -> list[Event]:
    events: list[Event] = client.get(f"/_sandbox/sessions/{session_uuid}/events").json()["events"]
    return events


def names(events: list[Event]) -> list[str]:
    return [event["EventName"].removeprefix("Session") for event in events]


def ended(events: list[Event]) -> list[Event]:
    """The ended-leg events: each one is one call leg."""
    return [e for e in events if e["EventName"].endswith(ENDED) and "Parties" not in e["EventName"]]


def deliveries(client: httpx2.Client) -> list[dict[str, Any]]:
    every: list[dict[str, Any]] = client.get("/_sandbox/deliveries").json()["deliveries"]
    return every


FAMILIES: list[tuple[str, str, bool, bool, list[str]]] = [
    ("hangup", "first", True, True, [
        "FirstPartyAnswer", "SecondPartyRing", "SecondPartyAnswer",
        "FirstPartyHangup", "SecondPartyHangup", "PartiesHangup",
    ]),
    ("hangup", "first", True, False, [
        "FirstPartyAnswer", "SecondPartyRing", "SecondPartyHangup", "FirstPartyHangup",
    ]),
    ("hangup", "first", False, True, ["FirstPartyHangup"]),
    ("hangup", "second", True, True, [
        "SecondPartyAnswer", "FirstPartyAnswer",
        "SecondPartyHangup", "FirstPartyHangup", "PartiesHangup",
    ]),
    ("hangup", "second", False, True, [
        "SecondPartyAnswer", "FirstPartyHangup", "SecondPartyHangup",
    ]),
    ("hangup", "second", True, False, ["SecondPartyHangup"]),
    ("hangup", "vts", True, True, [
        "FirstPartyAnswer", "SecondPartyRing", "SecondPartyAnswer",
        "FirstPartyHangup", "SecondPartyHangup", "PartiesHangup",
    ]),
    ("hangup", "vts", False, True, ["FirstPartyHangup"]),
    ("hangup", "vts", True, False, [
        "FirstPartyAnswer", "SecondPartyRing", "SecondPartyHangup", "FirstPartyHangup",
    ]),
    ("complete", "first", True, True, [
        "FirstPartyInitiated", "FirstPartyAnswer",
        "SecondPartyInitiated", "SecondPartyRing", "SecondPartyAnswer",
        "FirstPartyComplete", "SecondPartyComplete",
    ]),
    ("complete", "first", True, False, [
        "FirstPartyInitiated", "FirstPartyAnswer", "SecondPartyInitiated", "SecondPartyRing",
        "SecondPartyFailed", "FirstPartyComplete",
    ]),
    ("complete", "first", False, True, ["FirstPartyInitiated", "FirstPartyFailed"]),
    ("complete", "second", True, True, [
        "SecondPartyInitiated", "SecondPartyAnswer",
        "FirstPartyInitiated", "FirstPartyRinging", "FirstPartyAnswer",
        "SecondPartyComplete", "FirstPartyComplete",
    ]),
    ("complete", "second", False, True, [
        "SecondPartyInitiated", "SecondPartyAnswer", "FirstPartyInitiated", "FirstPartyRinging",
        "FirstPartyFailed", "SecondPartyComplete",
    ]),
    ("complete", "vts", True, True, [
        "FirstPartyInitiated", "FirstPartyRinging", "FirstPartyAnswer",
        "SecondPartyInitiated", "SecondPartyRing", "SecondPartyAnswer",
        "FirstPartyComplete", "SecondPartyComplete",
    ]),
    ("complete", "vts", False, True, [
        "FirstPartyInitiated", "FirstPartyRinging", "FirstPartyFailed",
    ]),
]  # fmt: skip


@pytest.mark.parametrize(("family", "caller", "first", "second", "expected"), FAMILIES)
def test_event_sequence_per_caller_and_answers(
    start: Start,
    receiver: Receiver,
    family: str,
    caller: str,
    first: bool,
    second: bool,
    expected: list[str],
) -> None:
    """Each caller and answer combination yields VTS's events, in order, delivered in order."""
    client = start(event_family=family)
    uuid = new_session(client, receiver)
    answer = simulate(client, uuid, caller=caller, first_answers=first, second_answers=second)
    drain(client)
    events = generated(client, uuid)
    assert names(events) == expected
    assert answer["events"] == len(events)
    assert receiver.events == events
    assert [e["SequenceNumber"] for e in events] == [str(n) for n in range(1, len(events) + 1)]


@pytest.mark.parametrize(
    ("family", "expected"),
    [
        ("complete", ["VirtualNumberAnswer", "SecondPartyInitiated", "SecondPartyRing",
                      "SecondPartyAnswer", "FirstPartyComplete", "SecondPartyComplete"]),
        ("hangup", ["VirtualNumberAnswer", "SecondPartyRing", "SecondPartyAnswer",
                    "FirstPartyHangup", "SecondPartyHangup", "PartiesHangup"]),
    ],
)  # fmt: skip
def test_an_inbound_call_answered_by_the_virtual_number(
    start: Start, receiver: Receiver, family: str, expected: list[str]
) -> None:
    """virtual_number_answers: the caller's answered leg is one SessionVirtualNumberAnswer;
    the legs, billing and interaction record are those of any inbound call."""
    client = start(event_family=family)
    uuid = new_session(client, receiver)
    simulate(client, uuid, caller="first", virtual_number_answers=True)
    drain(client)
    assert names(generated(client, uuid)) == expected
    session = client.get(f"{BASE}/{uuid}").json()["response"]
    assert session["total_call_count"] == 2
    record = session["interaction"][0]
    assert (record["first_party_status"], record["second_party_status"]) == (
        "completed", "completed"
    )  # fmt: skip


def test_virtual_number_answers_needs_a_caller_who_dials_in(
    client: httpx2.Client, receiver: Receiver
) -> None:
    """VTS dialling out never answers the virtual number: the request is refused, naming it."""
    uuid = new_session(client, receiver)
    body = {"caller": "vts", "virtual_number_answers": True}
    answer = client.post(f"/_sandbox/sessions/{uuid}/calls", json=body)
    assert answer.status_code == 400
    assert "virtual_number_answers" in answer.json()["error"]


@pytest.mark.parametrize(("family", "caller", "first", "second", "expected"), FAMILIES)
def test_session_totals_equal_the_ended_leg_events(
    start: Start,
    receiver: Receiver,
    family: str,
    caller: str,
    first: bool,
    second: bool,
    expected: list[str],
) -> None:
    """total_call_count, billed duration and amount are the sums over ended-leg events."""
    client = start(event_family=family)
    uuid = new_session(client, receiver)
    for duration in (61, 0):
        body = {"first_answers": first, "second_answers": second, "duration": duration}
        simulate(client, uuid, caller=caller, ring_seconds=7, **body)
    legs = ended(generated(client, uuid))
    session = client.get(f"{BASE}/{uuid}").json()["response"]
    legs_per_call = [name for name in expected if "Party" in name and name.endswith(ENDED)]
    assert session["total_call_count"] == len(legs) == 2 * len(legs_per_call)
    assert session["total_call_billed_duration"] == sum(int(e["BilledDuration"]) for e in legs)
    amount = sum((Decimal(e["Amount"]) for e in legs), Decimal(0))
    assert Decimal(str(session["total_call_amount"])) == amount


def test_bridged_call_fields_timestamps_and_billing(
    client: httpx2.Client, receiver: Receiver
) -> None:
    """A bridged call's events are strings, numbers lack '+', times and billing follow the legs."""
    uuid = new_session(client, receiver)
    simulate(client, uuid, caller="first", duration=61, ring_seconds=5, hangup_cause="USER_BUSY")
    events = generated(client, uuid)
    assert all(isinstance(v, str) for event in events for v in event.values())
    for event in events:
        assert (event["FirstParty"], event["SecondParty"]) == (A[1:], B[1:])
        assert event["VirtualNumber"] == "14152000000"
        assert event["SessionUUID"] == uuid
    stamps = [e["EventTimestamp"] for e in events]
    assert (
        stamps
        == ["2024-01-03 13:35:00"] * 2 + ["2024-01-03 13:35:05"] + ["2024-01-03 13:36:06"] * 3
    )
    first_end, second_end, parties = events[3:]
    assert (first_end["Duration"], first_end["BilledDuration"], first_end["Amount"]) == (
        "66",
        "120",
        "0.01700",
    )
    assert (second_end["Duration"], second_end["BilledDuration"], second_end["Amount"]) == (
        "61",
        "120",
        "0.01700",
    )
    assert (first_end["HangupCause"], first_end["HangupCauseCode"]) == ("USER_BUSY", "3000")
    assert first_end["CallUUID"] == events[0]["CallUUID"] != second_end["CallUUID"]
    assert second_end["CallUUID"] == events[1]["CallUUID"] == events[2]["CallUUID"]
    assert parties["Duration"] == "61"
    assert {"CallUUID", "BilledDuration", "Amount"}.isdisjoint(parties)


def test_unanswered_leg_is_billed_nothing(client: httpx2.Client, receiver: Receiver) -> None:
    """A dialled party that never answers ends NO_ANSWER with 0 seconds billed, 0 amount."""
    uuid = new_session(client, receiver)
    simulate(client, uuid, caller="first", second_answers=False, ring_seconds=20)
    (first_end,) = [
        e for e in generated(client, uuid) if e["EventName"] == "SessionFirstPartyHangup"
    ]
    (second_end,) = [
        e for e in generated(client, uuid) if e["EventName"] == "SessionSecondPartyHangup"
    ]
    assert (second_end["Duration"], second_end["BilledDuration"], second_end["Amount"]) == (
        "0",
        "0",
        "0.00000",
    )
    assert (second_end["HangupCause"], second_end["HangupCauseCode"]) == ("NO_ANSWER", "3110")
    assert (first_end["Duration"], first_end["BilledDuration"], first_end["HangupCause"]) == (
        "20",
        "60",
        "NORMAL_CLEARING",
    )


def test_caller_who_gives_up_is_originator_cancel(
    client: httpx2.Client, receiver: Receiver
) -> None:
    """A caller who hangs up before VTS answers is ORIGINATOR_CANCEL, and nobody else is dialled."""
    uuid = new_session(client, receiver)
    simulate(client, uuid, caller="second", second_answers=False)
    (event,) = generated(client, uuid)
    assert (event["EventName"], event["HangupCause"], event["BilledDuration"]) == (
        "SessionSecondPartyHangup",
        "ORIGINATOR_CANCEL",
        "0",
    )


@pytest.mark.parametrize(
    ("increment", "billed", "amount"),
    [(1, "61", "0.00864"), (60, "120", "0.01700"), (30, "90", "0.01275")],
)
def test_billing_rounds_up_to_the_increment(
    start: Start, receiver: Receiver, increment: int, billed: str, amount: str
) -> None:
    """BilledDuration rounds up to billing_increment; Amount is billed minutes at the rate."""
    client = start(billing_increment=increment)
    uuid = new_session(client, receiver)
    simulate(client, uuid, caller="vts", duration=61)
    second_end = ended(generated(client, uuid))[1]
    assert (second_end["Duration"], second_end["BilledDuration"], second_end["Amount"]) == (
        "61",
        billed,
        amount,
    )


def test_sequence_numbers_continue_across_calls(client: httpx2.Client, receiver: Receiver) -> None:
    """SequenceNumber counts every event of the session, from 1, across calls."""
    uuid = new_session(client, receiver)
    other = new_session(client, receiver, first_party="+16175551234")
    simulate(client, uuid, caller="first")
    simulate(client, other, caller="first")
    simulate(client, uuid, caller="vts", first_answers=False)
    drain(client)
    numbers = [int(e["SequenceNumber"]) for e in generated(client, uuid)]
    assert numbers == list(range(1, 8))
    mine = [e for e in receiver.events if e["SessionUUID"] == uuid]
    assert [int(e["SequenceNumber"]) for e in mine] == numbers


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_callbacks_are_signed_against_the_callback_url(
    client: httpx2.Client, receiver: Receiver, method: str
) -> None:
    """Every callback uses the session's method and carries a V3 signature of exactly its URL."""
    uuid = new_session(client, receiver, callback_method=method)
    simulate(client, uuid, caller="first")
    drain(client)
    assert len(receiver.requests) == 6
    for received in receiver.requests:
        assert (received.method, received.path) == (method, "/hooks/session/")
        assert received.query.get("tenant") == "t-1"
        signature = received.headers["x-vts-signature-v3"]
        nonce = received.headers["x-vts-signature-v3-nonce"]
        assert len(nonce) == 20
        assert nonce.isdigit()
        assert verify_v3(receiver.callback_url, received.event, nonce, signature, AUTH[1], method)
        assert not verify_v3(
            receiver.url + "/hooks/session/", received.event, nonce, signature, AUTH[1], method
        )
        assert not verify_v3(
            receiver.callback_url, received.event, new_nonce(), signature, AUTH[1], method
        )
    if method == "POST":
        assert all(
            r.headers["content-type"] == "application/x-www-form-urlencoded"
            for r in receiver.requests
        )
    else:
        # A GET also verifies against the whole URL it arrived on, with no separate fields.
        first = receiver.requests[0]
        whole = f"{receiver.url}{first.path}?{first.raw_query}"
        nonce, signature = (first.headers[f"x-vts-signature-v3{s}"] for s in ("-nonce", ""))
        assert verify_v3(whole, {}, nonce, signature, AUTH[1], "GET")


@pytest.mark.parametrize("dialect", ["envelope", "bare"])
def test_interaction_record_in_both_dialects(
    start: Start, receiver: Receiver, dialect: str
) -> None:
    """Each call appends an interaction record, readable in both dialects."""
    client = start(dialect=dialect)
    uuid = new_session(client, receiver)
    simulate(client, uuid, caller="first", duration=61, ring_seconds=5)
    simulate(client, uuid, caller="vts", second_answers=False)
    events = generated(client, uuid)
    body = client.get(f"{BASE}/{uuid}").json()
    session = body if dialect == "bare" else body["response"]
    records = json.loads(session["interaction"]) if dialect == "bare" else session["interaction"]
    read = parse_session(body).interactions
    assert read is not None
    assert [(r.first_party_call_uuid, r.call_billed_duration) for r in read] == [
        (events[0]["CallUUID"], 240),
        (events[-1]["CallUUID"], 0),  # VTS gave up on the second party at once
    ]
    bridged, missed = records
    first_uuid = events[0]["CallUUID"]
    assert bridged["first_party_resource_url"].endswith(f"/v1/Account/{AUTH[0]}/Call/{first_uuid}/")
    assert (bridged["first_party_status"], bridged["second_party_status"], bridged["type"]) == (
        "completed",
        "completed",
        "call",
    )
    assert (missed["first_party_status"], missed["second_party_status"]) == (
        "completed",
        "no-answer",
    )
    if dialect == "bare":
        assert all(isinstance(value, str) for value in bridged.values())
        assert (
            bridged["total_call_count"],
            bridged["call_billed_duration"],
            bridged["total_call_amount"],
        ) == ("2", "240", "0.03400")
        assert (bridged["duration"], bridged["recording_resource_url"]) == ("66", "null")
        assert (bridged["start_time"], bridged["end_time"]) == (
            "2024-01-03 13:35:00",
            "2024-01-03 13:36:06",
        )
        assert (session["total_call_count"], session["last_interaction_time"]) == (
            "4",
            "2024-01-03 13:35:00",
        )
    else:
        assert (
            bridged["total_call_count"],
            bridged["call_billed_duration"],
            bridged["total_call_amount"],
        ) == (2, 240, 0.034)
        assert (bridged["duration"], bridged["recording_resource_url"]) == (66, None)
        assert bridged["end_time"] == "2024-01-03 13:36:06.000000 +0000 UTC"
        assert session["total_call_count"] == 4


def test_calls_need_an_active_known_session(
    client: httpx2.Client, receiver: Receiver, clock: Clock
) -> None:
    """An unknown session is 404, an expired one 400, and a bad field 400 naming it."""
    uuid = new_session(client, receiver, session_expiry=60)
    path = f"/_sandbox/sessions/{uuid}/calls"
    assert client.post("/_sandbox/sessions/nope/calls", json={"caller": "first"}).status_code == 404
    for bad, word in [
        ({}, "caller"),
        ({"caller": "third"}, "caller"),
        ({"caller": "vts", "duration": -1}, "duration"),
        ({"caller": "vts", "first_answers": "yes"}, "first_answers"),
        ({"caller": "vts", "colour": 1}, "colour"),
    ]:
        response = client.post(path, json=bad)
        assert response.status_code == 400
        assert word in response.json()["error"]
    clock.advance(60)
    response = client.post(path, json={"caller": "first"})
    assert (response.status_code, response.json()) == (400, {"error": "session is expired"})
    assert generated(client, uuid) == []


def test_recorded_defaults_to_the_session_and_needs_a_bridge(
    client: httpx2.Client, receiver: Receiver
) -> None:
    """recorded follows the session's record option unless given, and only for bridged calls."""
    uuid = new_session(client, receiver, record=True)
    assert simulate(client, uuid, caller="first")["recorded"] is True
    assert simulate(client, uuid, caller="first", recorded=False)["recorded"] is False
    assert simulate(client, uuid, caller="first", second_answers=False)["recorded"] is False


def test_no_callback_url_means_nothing_is_sent(client: httpx2.Client, receiver: Receiver) -> None:
    """Without a callback_url the events are generated and counted but never sent."""
    response = client.post(BASE, json={"first_party": A, "second_party": B})
    uuid = response.json()["session_uuid"]
    simulate(client, uuid, caller="first")
    drain(client)
    assert len(generated(client, uuid)) == 6
    assert (receiver.requests, deliveries(client)) == ([], [])


def test_duplicate_fault_sends_each_event_twice_the_copy_later(
    client: httpx2.Client, receiver: Receiver
) -> None:
    """callback_duplicate_rate 1 delivers every event again after the call's others."""
    client.put("/_sandbox/faults", json={"callback_duplicate_rate": 1})
    uuid = new_session(client, receiver)
    simulate(client, uuid, caller="first")
    drain(client)
    events = generated(client, uuid)
    assert receiver.events == events + events
    nonces = {r.headers["x-vts-signature-v3-nonce"] for r in receiver.requests}
    assert len(nonces) == 12
    assert [d["duplicate"] for d in deliveries(client)] == [False] * 6 + [True] * 6
    assert client.get("/_sandbox/stats").json()["callbacks"]["duplicated"] == 6


def test_reorder_fault_swaps_adjacent_pairs(client: httpx2.Client, receiver: Receiver) -> None:
    """callback_reorder_rate 1 swaps each adjacent pair of a call's events."""
    client.put("/_sandbox/faults", json={"callback_reorder_rate": 1})
    uuid = new_session(client, receiver)
    simulate(client, uuid, caller="first")
    drain(client)
    sequence = [int(e["SequenceNumber"]) for e in receiver.events]
    assert sequence == [2, 1, 4, 3, 6, 5]
    assert client.get("/_sandbox/stats").json()["callbacks"]["reordered"] == 3


def test_drop_fault_loses_events_but_keeps_them_listed(
    client: httpx2.Client, receiver: Receiver
) -> None:
    """callback_drop_rate 1 delivers nothing; the events stay listed and the drops recorded."""
    client.put("/_sandbox/faults", json={"callback_drop_rate": 1})
    uuid = new_session(client, receiver)
    simulate(client, uuid, caller="first")
    drain(client)
    assert receiver.requests == []
    assert len(generated(client, uuid)) == 6
    assert [(d["dropped"], d["attempt"], d["sequence_number"]) for d in deliveries(client)] == [
        (True, 0, n) for n in range(1, 7)
    ]
    assert client.get("/_sandbox/stats").json()["callbacks"]["dropped"] == 6


def test_partial_faults_are_reproducible_from_the_seed(
    client: httpx2.Client, receiver: Receiver
) -> None:
    """The same seed drops and duplicates the same events."""

    def run() -> list[tuple[int, bool, bool]]:
        client.post("/_sandbox/reset")
        client.put(
            "/_sandbox/faults",
            json={"callback_drop_rate": 0.3, "callback_duplicate_rate": 0.3, "seed": 7},
        )
        uuid = new_session(client, receiver)
        for _ in range(4):
            simulate(client, uuid, caller="first")
        drain(client)
        # Drops are recorded as the call is placed, sends as they happen: compare sorted.
        return sorted(
            (d["sequence_number"], d["dropped"], d["duplicate"]) for d in deliveries(client)
        )

    first = run()
    assert first == run()
    assert {True} == {dropped for _, dropped, _ in first if dropped}
    assert any(duplicate for _, _, duplicate in first)


def test_delay_fault_holds_each_delivery(client: httpx2.Client, receiver: Receiver) -> None:
    """callback_delay_ms waits before each delivery, so a call's events take that long each."""
    client.put("/_sandbox/faults", json={"callback_delay_ms": 100})
    uuid = new_session(client, receiver)
    began = time.monotonic()
    simulate(client, uuid, caller="first", second_answers=False)
    drain(client)
    assert time.monotonic() - began >= 0.4
    assert len(receiver.requests) == 4


def test_drain_times_out_while_deliveries_are_pending(
    client: httpx2.Client, receiver: Receiver
) -> None:
    """drain answers 504 with the pending count when time runs out; reset forgets them."""
    client.put("/_sandbox/faults", json={"callback_delay_ms": 30_000})
    uuid = new_session(client, receiver)
    simulate(client, uuid, caller="first")
    response = client.post("/_sandbox/drain", params={"timeout": "0.05"})
    assert (response.status_code, response.json()) == (504, {"pending": 6})
    assert client.get("/_sandbox/deliveries").json()["pending"] == 6
    assert client.post("/_sandbox/drain", params={"timeout": "x"}).status_code == 400
    client.post("/_sandbox/reset")
    assert client.get("/_sandbox/deliveries").json() == {"pending": 0, "deliveries": []}


def test_read_timeout_is_retried_once(start: Start, receiver: Receiver) -> None:
    """A receiver slower than callback_timeout gets the event once more, with a fresh nonce."""
    client = start(callback_timeout=0.3)
    receiver.stall_first = 10
    uuid = new_session(client, receiver)
    simulate(client, uuid, caller="first", first_answers=False)
    drain(client)
    first, again = receiver.requests
    assert first.event == again.event == generated(client, uuid)[0]
    assert first.headers["x-vts-signature-v3-nonce"] != again.headers["x-vts-signature-v3-nonce"]
    outcomes = [(d["attempt"], d["status_code"], d["error"]) for d in deliveries(client)]
    assert outcomes == [(1, None, "ReadTimeout"), (2, 200, None)]
    assert client.get("/_sandbox/stats").json()["callbacks"]["retried"] == 1


def test_connect_error_is_retried_once_then_given_up(
    client: httpx2.Client, receiver: Receiver
) -> None:
    """Nobody listening: each event is tried twice, then lost."""
    receiver.url = f"http://127.0.0.1:{free_port()}"
    uuid = new_session(client, receiver)
    simulate(client, uuid, caller="first", first_answers=False)
    drain(client)
    outcomes = [(d["attempt"], d["error"]) for d in deliveries(client)]
    assert outcomes == [(1, "ConnectError"), (2, "ConnectError")]
    assert client.get("/_sandbox/stats").json()["callbacks"]["failed"] == 1


def test_http_errors_are_not_retried(client: httpx2.Client, receiver: Receiver) -> None:
    """Any HTTP answer, even a 500, is final: one attempt per event."""
    receiver.status = 500
    uuid = new_session(client, receiver)
    simulate(client, uuid, caller="first")
    drain(client)
    assert len(receiver.requests) == 6
    assert {(d["attempt"], d["status_code"]) for d in deliveries(client)} == {(1, 500)}


def test_stats_count_callbacks(client: httpx2.Client, receiver: Receiver) -> None:
    """Stats count events generated, attempts and deliveries."""
    uuid = new_session(client, receiver)
    simulate(client, uuid, caller="first")
    drain(client)
    counts = client.get("/_sandbox/stats").json()["callbacks"]
    assert (counts["events"], counts["attempts"], counts["delivered"]) == (6, 6, 6)


def test_faults_validate_the_callback_settings(client: httpx2.Client) -> None:
    """Callback fault settings are validated like the others."""
    for bad in (
        {"callback_drop_rate": 1.5},
        {"callback_delay_ms": -1},
        {"callback_reorder_rate": "x"},
    ):
        assert client.put("/_sandbox/faults", json=bad).status_code == 400


def test_main_refuses_a_bad_billing_increment() -> None:
    """The command line refuses a billing increment below 1 and an unknown family."""
    for flags in (["--billing-increment", "0"], ["--event-family", "other"]):
        with pytest.raises(SystemExit):
            main(["--auth-id", AUTH[0], "--auth-token", AUTH[1], *flags])
