"""Simulated calls in the sandbox: the session events VTS would send, and their delivery.

``POST /_sandbox/sessions/{uuid}/calls`` with ``{"caller": "first"|"second"|"vts",
"first_answers", "second_answers", "duration", "ring_seconds", "hangup_cause",
"recorded"}`` simulates one call at once and answers ``202 {"call_id", "events",
"recorded"}``. An unknown session is 404 and an expired one 400 ``session is expired``:
VTS does not route calls to a virtual number whose session has ended. A bad field is
400 naming it. ``recorded`` defaults to the session's ``record`` and only counts when
the parties were bridged; recording callbacks are not simulated yet.

**The call.** ``first``/``second``: that party dials the virtual number and VTS, having
answered it, dials the other party. ``vts``: VTS dials the first party, then the second
(``initiate_call_to_first_party``). ``*_answers: false`` means, for a party VTS dials,
that it never answers (``NO_ANSWER``); for the party who dials, that it hangs up before
VTS answers (``ORIGINATOR_CANCEL``), so the other party is never dialled. Every dialled
leg rings ``ring_seconds``. A leg's ``Duration`` runs from its answer to its hangup, so
the caller's leg lasts the other leg's ring time plus ``duration`` and the called leg
``duration``. The call starts at the sandbox clock's "now" and all of it is generated at
once, timestamps running into the future; the session never reads ``in-progress``, and
``session_expiry`` and ``call_time_limit`` do not cut it short.

**The events** (family chosen by ``SandboxConfig.event_family``), named after the
session's parties, whoever calls. ``hangup``: ``Session{First,Second}PartyAnswer`` when a
leg is answered, ``SessionSecondPartyRing`` when VTS dials the second party (the family
has no ring event for the first), ``Session{First,Second}PartyHangup`` when a leg ends,
and ``SessionPartiesHangup`` last, only when the parties were bridged. ``complete``:
``...Initiated`` for every leg, ``SessionFirstPartyRinging``/``SessionSecondPartyRing``
when VTS dials it, ``...Answer``, then ``...Complete`` (answered) or ``...Failed``. When
bridged, the caller's leg ends first; otherwise the failed leg does.

Every value is a string; every event has ``EventName``, ``EventTimestamp`` (UTC,
``YYYY-MM-DD HH:MM:SS``), ``SessionUUID``, ``FirstParty``, ``SecondParty``,
``VirtualNumber`` (without ``+``) and ``SequenceNumber`` (per session, from 1, across
calls); leg events carry the leg's ``CallUUID``. An *ended-leg event* (``*PartyHangup``,
``*Complete``, ``*Failed``) adds ``Duration``, ``BilledDuration`` (rounded up to
``billing_increment``; 0 for a leg never answered), ``Amount`` (billed minutes times
``rate_per_minute``, 5 decimals, half up), ``HangupCause`` and ``HangupCauseCode``.
``SessionPartiesHangup`` is not a leg: it carries the bridged ``Duration`` and the cause,
and no billing. ``hangup_cause`` is the cause of a bridged call's end; a caller's leg
whose called party never answered ends ``NORMAL_CLEARING``. Cause codes follow Plivo's
families (see ``HANGUP_CAUSE_CODES``; unknown causes are ``1000``); VTS does not
document them.

**The session.** Each started leg ends with exactly one ended-leg event, and adds one to
``total_call_count``, its ``BilledDuration`` to ``total_call_billed_duration`` and its
``Amount`` to ``total_call_amount``. ``last_interaction_time`` becomes the call's end.
Every call, bridged or not, appends one ``interaction`` record; a leg never dialled has
``null`` resource URL and status; statuses are ``completed``, ``no-answer`` or ``cancel``;
its ``duration`` is the whole call's, from first ring to last hangup.

**Delivery.** To the session's current ``callback_url`` with its ``callback_method``
(``POST`` form-encoded; ``GET`` in the query string, merged with the URL's own query),
signed with V3 against exactly ``callback_url`` (fresh nonce per request, duplicates and
retries included). Nothing is sent when the session has no ``callback_url``. A call's
events go one at a time, in order, in a background task; calls of one session queue
behind each other. A connect error, connect timeout or read timeout is retried once at
once; any HTTP answer, 5xx included, is final. Faults (drop, reorder, duplicate, delay)
are drawn by :meth:`~service.vts.sandbox_traffic.Traffic.plan_callbacks` when the call
is placed. ``GET /_sandbox/deliveries`` lists every attempt (and dropped events, attempt
0) with ``pending``; ``POST /_sandbox/drain?timeout=S`` (default 10, at most 60) waits
until nothing is pending: 200 ``{"pending": 0}``, or 504 with the count if time runs out.
``GET /_sandbox/sessions/{uuid}/events`` lists every event generated, delivered or not.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Literal, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx2
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.vts.sandbox_sessions import (
    InvalidRequest,
    Refused,
    Session,
    SessionBook,
    SessionExpired,
)
from service.vts.sandbox_traffic import Traffic
from service.vts.signatures import NONCE_HEADERS, SIGNATURE_HEADERS, new_nonce, v3_signature

EventFamily = Literal["hangup", "complete"]
Caller = Literal["first", "second", "vts"]
Party = Literal["first", "second"]
Event = dict[str, str]
T = TypeVar("T")

HANGUP_CAUSE_CODES = {
    "NORMAL_CLEARING": "4000",
    "ORIGINATOR_CANCEL": "2000",
    "USER_BUSY": "3000",
    "CALL_REJECTED": "3010",
    "UNALLOCATED_NUMBER": "3020",
    "NO_ANSWER": "3110",
    "NO_USER_RESPONSE": "3110",
}
UNKNOWN_CAUSE_CODE = "1000"
_CAUSE = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
_SHOWABLE_NAME = re.compile(r"[a-z_]{1,64}")  # no digits: cannot be a phone number
_FIVE_PLACES = Decimal("0.00001")
_CALLERS: dict[str, Caller] = {"first": "first", "second": "second", "vts": "vts"}
_OTHER: dict[Party, Party] = {"first": "second", "second": "first"}
_RETRIED = (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.ReadTimeout)
_MAX_DRAIN = 60.0


@dataclass(frozen=True)
class CallRequest:
    """What the test asks for; seconds are whole."""

    caller: Caller
    first_answers: bool = True
    second_answers: bool = True
    duration: int = 30
    ring_seconds: int = 0
    hangup_cause: str = "NORMAL_CLEARING"
    recorded: bool | None = None


def _caller(value: object) -> Caller:
    if isinstance(value, str) and value in _CALLERS:
        return _CALLERS[value]
    raise ValueError("must be first, second or vts")


def _flag(value: object) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError("must be true or false")


def _optional_flag(value: object) -> bool | None:
    return None if value is None else _flag(value)


def _seconds(high: int) -> Callable[[object], int]:
    def check(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
            raise ValueError(f"must be a whole number of seconds from 0 to {high}")
        return value

    return check


def _cause(value: object) -> str:
    if isinstance(value, str) and _CAUSE.fullmatch(value):
        return value
    raise ValueError("must be an upper-case cause name such as NORMAL_CLEARING")


def _field(
    body: Mapping[str, object], name: str, rule: Callable[[object], T], default: object
) -> T:
    try:
        return rule(body.get(name, default))
    except ValueError as exc:
        raise InvalidRequest(f"{name} {exc}") from None


def parse_call(body: object) -> CallRequest:
    """The validated call request; raises :class:`InvalidRequest` naming the first bad field."""
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    unknown = [str(name) for name in body if name not in CallRequest.__dataclass_fields__]
    if unknown:
        shown = ["(a name not shown)" if not _SHOWABLE_NAME.fullmatch(n) else n for n in unknown]
        raise InvalidRequest(f"unknown fields: {', '.join(sorted(shown))}")
    return CallRequest(
        caller=_field(body, "caller", _caller, None),
        first_answers=_field(body, "first_answers", _flag, True),
        second_answers=_field(body, "second_answers", _flag, True),
        duration=_field(body, "duration", _seconds(86400), 30),
        ring_seconds=_field(body, "ring_seconds", _seconds(300), 0),
        hangup_cause=_field(body, "hangup_cause", _cause, "NORMAL_CLEARING"),
        recorded=_field(body, "recorded", _optional_flag, None),
    )


@dataclass(frozen=True)
class Billing:
    """How VTS bills a leg: by ``increment`` seconds, rounded up, at ``rate_per_minute``."""

    increment: int = 60
    rate_per_minute: Decimal = Decimal("0.0085")

    def billed(self, seconds: int) -> int:
        return -(-seconds // self.increment) * self.increment

    def amount(self, billed: int) -> Decimal:
        return (billed * self.rate_per_minute / 60).quantize(_FIVE_PLACES, ROUND_HALF_UP)


@dataclass(frozen=True)
class Leg:
    """One party's call leg; times are whole seconds from the call's start."""

    party: Party
    inbound: bool  # the party dialled the virtual number, rather than VTS dialling it
    start: int
    end: int
    answered: int | None
    cause: str
    call_uuid: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def duration(self) -> int:
        return 0 if self.answered is None else self.end - self.answered

    @property
    def status(self) -> str:
        if self.answered is not None:
            return "completed"
        return "cancel" if self.inbound else "no-answer"


@dataclass(frozen=True)
class Call:
    """One simulated call: the caller's leg first; ``bridged`` once both legs answered."""

    call_id: str
    start: float
    legs: tuple[Leg, ...]
    bridged: bool
    cause: str
    recorded: bool

    @property
    def length(self) -> int:
        return max(leg.end for leg in self.legs)


def place_call(request: CallRequest, now: float, record: bool) -> Call:
    """The call ``request`` describes, starting at ``now`` (epoch seconds).

    ``record`` is the session's option, used unless the request says otherwise.
    """
    legs = _legs(request)
    bridged = len(legs) == 2 and legs[1].answered is not None
    recorded = bridged and (record if request.recorded is None else request.recorded)
    return Call(str(uuid.uuid4()), now, legs, bridged, request.hangup_cause, recorded)


def _legs(request: CallRequest) -> tuple[Leg, ...]:
    """The caller's leg, then the called party's if VTS got as far as dialling it."""
    caller: Party = "second" if request.caller == "second" else "first"
    called, inbound, ring = _OTHER[caller], request.caller != "vts", request.ring_seconds
    answers = {"first": request.first_answers, "second": request.second_answers}
    answered = 0 if inbound else ring  # VTS answers a caller at once; a party it dials rings
    if not answers[caller]:
        gave_up = "ORIGINATOR_CANCEL" if inbound else "NO_ANSWER"
        return (Leg(caller, inbound, 0, answered, None, gave_up),)
    if not answers[called]:
        end = answered + ring
        return (
            Leg(caller, inbound, 0, end, answered, "NORMAL_CLEARING"),
            Leg(called, False, answered, end, None, "NO_ANSWER"),
        )
    end, cause = answered + ring + request.duration, request.hangup_cause
    return (
        Leg(caller, inbound, 0, end, answered, cause),
        Leg(called, False, answered, end, answered + ring, cause),
    )


@dataclass(frozen=True)
class _Moment:
    """One event of a call, before the session's fields are added."""

    name: str
    at: int
    fields: dict[str, str]


def _cause_fields(cause: str) -> dict[str, str]:
    return {
        "HangupCause": cause,
        "HangupCauseCode": HANGUP_CAUSE_CODES.get(cause, UNKNOWN_CAUSE_CODE),
    }


def _opening(leg: Leg, family: EventFamily) -> list[_Moment]:
    prefix, dialled = f"Session{leg.party.title()}Party", not leg.inbound
    steps: list[tuple[str, int]] = []
    if family == "complete":
        steps.append(("Initiated", leg.start))
        if dialled:
            steps.append(("Ringing" if leg.party == "first" else "Ring", leg.start))
    elif dialled and leg.party == "second":
        steps.append(("Ring", leg.start))
    if leg.answered is not None:
        steps.append(("Answer", leg.answered))
    return [_Moment(prefix + verb, at, {"CallUUID": leg.call_uuid}) for verb, at in steps]


def _ending(leg: Leg, family: EventFamily, billing: Billing) -> _Moment:
    verb = "Hangup" if family == "hangup" else "Complete" if leg.answered is not None else "Failed"
    billed = billing.billed(leg.duration)
    fields = {
        "CallUUID": leg.call_uuid,
        "Duration": str(leg.duration),
        "BilledDuration": str(billed),
        "Amount": f"{billing.amount(billed):.5f}",
    }
    return _Moment(
        f"Session{leg.party.title()}Party{verb}", leg.end, fields | _cause_fields(leg.cause)
    )


def _moments(call: Call, family: EventFamily, billing: Billing) -> list[_Moment]:
    opened = [moment for leg in call.legs for moment in _opening(leg, family)]
    ending_order = call.legs if call.bridged else call.legs[::-1]
    ended = [_ending(leg, family, billing) for leg in ending_order]
    if not (call.bridged and family == "hangup"):
        return opened + ended
    bridged = {"Duration": str(call.legs[1].duration)} | _cause_fields(call.cause)
    return [*opened, *ended, _Moment("SessionPartiesHangup", call.length, bridged)]


def _timestamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")


def call_events(
    call: Call, session: Session, family: EventFamily, billing: Billing, first_sequence: int
) -> list[Event]:
    """The events VTS sends for ``call``, numbered from ``first_sequence``."""
    common = {
        "SessionUUID": session.session_uuid,
        "FirstParty": session.first_party.removeprefix("+"),
        "SecondParty": session.second_party.removeprefix("+"),
        "VirtualNumber": session.virtual_number.removeprefix("+"),
    }
    return [
        {"EventName": moment.name, "EventTimestamp": _timestamp(call.start + moment.at)}
        | common
        | {"SequenceNumber": str(first_sequence + number)}
        | moment.fields
        for number, moment in enumerate(_moments(call, family, billing))
    ]


def record_call(session: Session, call: Call, billing: Billing, calls_url: str) -> None:
    """Add the call to the session's totals and ``interaction``, as its events imply.

    ``calls_url`` prefixes the call resources' URLs (``{calls_url}{call_uuid}/``).
    """
    billed = [billing.billed(leg.duration) for leg in call.legs]
    amount = sum((billing.amount(seconds) for seconds in billed), Decimal(0))
    session.total_call_count += len(call.legs)
    session.total_call_billed_duration += sum(billed)
    session.total_call_amount += amount
    session.last_interaction_time = call.start + call.length
    record = _interaction(call, calls_url) | {
        "call_billed_duration": sum(billed),
        "total_call_amount": amount,
    }
    session.interaction = [*(session.interaction or []), record]


def _interaction(call: Call, calls_url: str) -> dict[str, object]:
    """The call's ``interaction`` record, but for its billing."""
    record: dict[str, object] = {
        "start_time": datetime.fromtimestamp(call.start, UTC),
        "end_time": datetime.fromtimestamp(call.start + call.length, UTC),
    }
    legs = {leg.party: leg for leg in call.legs}
    for party in ("first", "second"):
        leg = legs.get(party)
        record[f"{party}_party_resource_url"] = leg and f"{calls_url}{leg.call_uuid}/"
        record[f"{party}_party_status"] = leg and leg.status
    record |= {"type": "call", "total_call_count": len(call.legs), "duration": call.length}
    return record | {"recording_resource_url": None}


@dataclass(frozen=True)
class Delivery:
    """One delivery attempt (``attempt`` 0: the event was dropped, never sent)."""

    call_id: str
    session_uuid: str
    sequence_number: int
    event_name: str
    duplicate: bool
    attempt: int
    status_code: int | None
    error: str | None
    dropped: bool


@dataclass(frozen=True)
class _Target:
    url: str
    method: str


@dataclass(frozen=True)
class _Parcel:
    """One event of a call to send; ``duplicate`` when it is the fault's second copy."""

    call_id: str
    event: Event
    duplicate: bool


def _with_query(url: str, params: Mapping[str, str]) -> str:
    """``url`` with ``params`` merged into its query, as V3 merges them for GET."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit(parts._replace(query=urlencode({**params, **query})))


class Courier:
    """Delivers session events as VTS does: signed, one at a time, retried once."""

    def __init__(self, traffic: Traffic, auth_token: str, timeout: float) -> None:
        self._traffic = traffic
        self._token = auth_token
        self._timeout = timeout
        self._client: httpx2.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._remaining: dict[str, int] = {}
        self.deliveries: list[Delivery] = []

    @property
    def pending(self) -> int:
        """Events queued or in flight."""
        return sum(self._remaining.values())

    def dispatch(self, session: Session, call_id: str, events: Sequence[Event]) -> None:
        """Plan the faults and start delivering ``events`` in the background."""
        url, method = session.options["callback_url"], session.options["callback_method"]
        if not isinstance(url, str):
            return  # VTS has nowhere to send them
        plan = self._traffic.plan_callbacks(len(events))
        for index in plan.dropped:
            self._record(_Parcel(call_id, events[index], False), attempt=0)
        parcels = [_Parcel(call_id, events[index], again) for index, again in plan.sends]
        if parcels:
            self._remaining[call_id] = len(parcels)
            task = asyncio.create_task(self._deliver_call(_Target(url, str(method)), parcels))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver_call(self, target: _Target, parcels: list[_Parcel]) -> None:
        call_id = parcels[0].call_id
        async with self._locks[parcels[0].event["SessionUUID"]]:  # a session's calls queue
            for parcel in parcels:
                await self._deliver(target, parcel)
                if call_id in self._remaining:  # unless a reset forgot the call
                    self._remaining[call_id] -= 1
        self._remaining.pop(call_id, None)

    async def _deliver(self, target: _Target, parcel: _Parcel) -> None:
        if delay := self._traffic.faults.callback_delay_ms:
            await asyncio.sleep(delay / 1000)
        for attempt in (1, 2):
            if not await self._attempt(target, parcel, attempt):
                return

    async def _attempt(self, target: _Target, parcel: _Parcel, attempt: int) -> bool:
        """Send once and record the outcome; whether VTS would try again."""
        counts = self._traffic.stats.callbacks
        counts["attempts"] += 1
        try:
            response = await self._send(target, parcel.event)
        except httpx2.TransportError as exc:
            self._record(parcel, attempt, error=type(exc).__name__)
            again = attempt == 1 and isinstance(exc, _RETRIED)
            counts["retried" if again else "failed"] += 1
            return again
        self._record(parcel, attempt, status_code=response.status_code)
        counts["delivered"] += 1
        return False

    async def _send(self, target: _Target, event: Event) -> httpx2.Response:
        nonce = new_nonce()
        signature = v3_signature(target.url, event, nonce, self._token, target.method)
        headers = {SIGNATURE_HEADERS[0]: signature, NONCE_HEADERS[0]: nonce}
        if self._client is None:
            self._client = httpx2.AsyncClient(timeout=self._timeout)
        if target.method == "GET":
            return await self._client.get(_with_query(target.url, event), headers=headers)
        return await self._client.post(target.url, data=event, headers=headers)

    def _record(
        self,
        parcel: _Parcel,
        attempt: int,
        status_code: int | None = None,
        error: str | None = None,
    ) -> None:
        event = parcel.event
        delivery = Delivery(
            call_id=parcel.call_id,
            session_uuid=event["SessionUUID"],
            sequence_number=int(event["SequenceNumber"]),
            event_name=event["EventName"],
            duplicate=parcel.duplicate,
            attempt=attempt,
            status_code=status_code,
            error=error,
            dropped=attempt == 0,
        )
        self.deliveries.append(delivery)

    async def drain(self, timeout: float) -> int:
        """Wait until nothing is pending, or ``timeout`` seconds; how many still are."""
        with suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self._tasks:
                    await asyncio.wait(set(self._tasks))
        return self.pending

    async def clear(self) -> None:
        """Stop every delivery and forget them all."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._remaining.clear()
        self._locks.clear()
        self.deliveries.clear()

    async def close(self) -> None:
        await self.clear()
        if self._client is not None:
            await self._client.aclose()
            self._client = None


@dataclass(frozen=True)
class CallSettings:
    """The sandbox settings simulated calls need."""

    auth_id: str
    auth_token: str
    family: EventFamily = "hangup"
    billing: Billing = Billing()
    callback_timeout: float = 5.0


async def _json_body(request: Request) -> object:
    try:
        return json.loads(await request.body())
    except ValueError:
        raise InvalidRequest("the body must be a JSON object") from None


def _drain_timeout(request: Request) -> float:
    text = request.query_params.get("timeout", "10")
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= _MAX_DRAIN:
        raise InvalidRequest(f"timeout must be a number of seconds from 0 to {_MAX_DRAIN:g}")
    return seconds


class Switchboard:
    """Simulated calls: their events, their effect on sessions, and the control routes."""

    def __init__(self, book: SessionBook, traffic: Traffic, settings: CallSettings) -> None:
        self.book = book
        self.traffic = traffic
        self.settings = settings
        self.events: defaultdict[str, list[Event]] = defaultdict(list)
        self.courier = Courier(traffic, settings.auth_token, settings.callback_timeout)

    def place(
        self, session_uuid: str, body: object, base_url: str
    ) -> tuple[Session, Call, list[Event]]:
        """Simulate a call on the session; raises :class:`Refused`."""
        session = self.book.get(session_uuid)
        request = parse_call(body)
        now = self.book.clock()
        if session.status(now) == "expired":
            raise SessionExpired
        call = place_call(request, now, record=session.options["record"] is True)
        log = self.events[session_uuid]
        family, billing = self.settings.family, self.settings.billing
        events = call_events(call, session, family, billing, len(log) + 1)
        log.extend(events)
        calls_url = f"{base_url.rstrip('/')}/v1/Account/{self.settings.auth_id}/Call/"
        record_call(session, call, billing, calls_url)
        self.traffic.stats.callbacks["events"] += len(events)
        return session, call, events

    async def simulate(self, request: Request) -> Response:
        try:
            body = await _json_body(request)
            session, call, events = self.place(
                request.path_params["session_uuid"], body, str(request.base_url)
            )
        except Refused as exc:
            return JSONResponse({"error": str(exc)}, exc.status)
        self.courier.dispatch(session, call.call_id, events)
        answer = {"call_id": call.call_id, "events": len(events), "recorded": call.recorded}
        return JSONResponse(answer, 202)

    async def session_events(self, request: Request) -> Response:
        session_uuid = request.path_params["session_uuid"]
        if session_uuid not in self.book.sessions:
            return JSONResponse({"error": "session not found"}, 404)
        return JSONResponse({"events": self.events.get(session_uuid, [])})

    async def deliveries(self, request: Request) -> Response:
        every = [asdict(delivery) for delivery in self.courier.deliveries]
        return JSONResponse({"pending": self.courier.pending, "deliveries": every})

    async def drain(self, request: Request) -> Response:
        try:
            timeout = _drain_timeout(request)
        except InvalidRequest as exc:
            return JSONResponse({"error": str(exc)}, 400)
        pending = await self.courier.drain(timeout)
        return JSONResponse({"pending": pending}, 504 if pending else 200)

    async def clear(self) -> None:
        await self.courier.clear()
        self.events.clear()
