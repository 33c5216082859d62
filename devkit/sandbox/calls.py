"""Simulated calls in the sandbox: the session events VTS would send, and their delivery.

``POST /_sandbox/sessions/{uuid}/calls`` with ``{"caller": "first"|"second"|"vts",
"first_answers", "second_answers", "duration", "ring_seconds", "hangup_cause",
"recorded", "recording_fails", "virtual_number_answers"}`` simulates one call at once
and answers ``202 {"call_id", "events", "recorded", "recording_uuid"}``. An unknown
session is 404 and an expired one 400 ``session is expired``: VTS does not route calls
to a virtual number whose session has ended. A bad field is 400 naming it. ``recorded``
defaults to the session's ``record`` and only counts when the parties were bridged; a
recorded call makes a recording of the bridge (see :mod:`devkit.sandbox.recordings`),
which fails when ``recording_fails`` is true (default false).

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
bridged, the caller's leg ends first; otherwise the failed leg does. With
``virtual_number_answers: true`` (only for a caller who dials in) VTS reports the caller's
answered leg as one ``SessionVirtualNumberAnswer`` instead of the caller's own
``...Initiated`` and ``...Answer``, as it does for some inbound calls.

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

**Delivery.** To the session's current ``callback_url`` with its ``callback_method``,
by :mod:`devkit.sandbox.callbacks` (signed, one at a time, calls of one session
queued behind each other, retried once on a network error, faults drawn when the call
is placed); nothing is sent when the session has no ``callback_url``. ``GET
/_sandbox/deliveries`` lists every attempt of either channel (and dropped events,
attempt 0) with ``pending``; ``POST /_sandbox/drain?timeout=S`` (default 10, at most 60)
waits until nothing is pending: 200 ``{"pending": 0}``, or 504 with the count if time
runs out. ``GET /_sandbox/sessions/{uuid}/events`` lists every session event generated,
delivered or not (recording events are not among them).
"""

from __future__ import annotations

import json
import re
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Literal, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from devkit.sandbox.callbacks import Courier, Event, Target, event_time, party_fields
from devkit.sandbox.recordings import Archive, Recording
from devkit.sandbox.sessions import (
    InvalidRequest,
    Refused,
    Session,
    SessionBook,
    SessionExpired,
)
from devkit.sandbox.traffic import Traffic

EventFamily = Literal["hangup", "complete"]
Caller = Literal["first", "second", "vts"]
Party = Literal["first", "second"]
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
    recording_fails: bool = False
    virtual_number_answers: bool = False


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
        recording_fails=_field(body, "recording_fails", _flag, False),
        virtual_number_answers=_virtual_number_answers(body),
    )


def _virtual_number_answers(body: Mapping[str, object]) -> bool:
    answers = _field(body, "virtual_number_answers", _flag, False)
    if answers and body.get("caller") == "vts":
        raise InvalidRequest("virtual_number_answers needs a caller who dials in")
    return answers


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
    # VTS reports this (inbound) leg's answer as SessionVirtualNumberAnswer.
    virtual_number_answers: bool = False

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
    recording_fails: bool = False

    @property
    def length(self) -> int:
        return max(leg.end for leg in self.legs)

    @property
    def bridge(self) -> tuple[float, float]:
        """When the parties were bridged: from the called leg's answer to the call's end."""
        answered = self.legs[-1].answered
        assert self.bridged, "only a bridged call has a bridge"
        assert answered is not None
        return self.start + answered, self.start + self.length


def place_call(request: CallRequest, now: float, record: bool) -> Call:
    """The call ``request`` describes, starting at ``now`` (epoch seconds).

    ``record`` is the session's option, used unless the request says otherwise.
    """
    legs = _legs(request)
    bridged = len(legs) == 2 and legs[1].answered is not None
    recorded = bridged and (record if request.recorded is None else request.recorded)
    fails = request.recording_fails
    return Call(str(uuid.uuid4()), now, legs, bridged, request.hangup_cause, recorded, fails)


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
        end, by_number = answered + ring, request.virtual_number_answers
        return (
            Leg(
                caller,
                inbound,
                0,
                end,
                answered,
                "NORMAL_CLEARING",
                virtual_number_answers=by_number,
            ),
            Leg(called, False, answered, end, None, "NO_ANSWER"),
        )
    end, cause = answered + ring + request.duration, request.hangup_cause
    by_number = request.virtual_number_answers
    return (
        Leg(caller, inbound, 0, end, answered, cause, virtual_number_answers=by_number),
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
    if leg.virtual_number_answers and leg.answered is not None:
        fields = {"CallUUID": leg.call_uuid}
        return [_Moment("SessionVirtualNumberAnswer", leg.answered, fields)]
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


def call_events(
    call: Call, session: Session, family: EventFamily, billing: Billing, first_sequence: int
) -> list[Event]:
    """The events VTS sends for ``call``, numbered from ``first_sequence``."""
    return [
        {"EventName": moment.name, "EventTimestamp": event_time(call.start + moment.at)}
        | party_fields(session)
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


@dataclass(frozen=True)
class Placed:
    """A simulated call and everything it generated."""

    session: Session
    call: Call
    events: list[Event]
    recording: Recording | None = None
    recording_events: tuple[Event, ...] = ()


class Switchboard:
    """Simulated calls: their events, their effect on sessions, and the control routes."""

    def __init__(
        self, book: SessionBook, traffic: Traffic, archive: Archive, settings: CallSettings
    ) -> None:
        self.book = book
        self.traffic = traffic
        self.archive = archive
        self.settings = settings
        self.events: defaultdict[str, list[Event]] = defaultdict(list)
        self.courier = Courier(traffic, settings.auth_token, settings.callback_timeout)

    def place(self, session_uuid: str, body: object, base_url: str) -> Placed:
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
        if not call.recorded:
            return Placed(session, call, events)
        recording, said = self.archive.record(session, *call.bridge, call.recording_fails, base_url)
        if not recording.failed:
            assert session.interaction is not None  # record_call has just added to it
            session.interaction[-1]["recording_resource_url"] = recording.resource_url
        return Placed(session, call, events, recording, tuple(said))

    async def simulate(self, request: Request) -> Response:
        try:
            body = await _json_body(request)
            placed = self.place(request.path_params["session_uuid"], body, str(request.base_url))
        except Refused as exc:
            return JSONResponse({"error": str(exc)}, exc.status)
        call, session = placed.call, placed.session
        self.courier.dispatch(Target.of(session, "session"), "session", call.call_id, placed.events)
        target = Target.of(session, "recording")
        self.courier.dispatch(target, "recording", call.call_id, placed.recording_events)
        answer = {
            "call_id": call.call_id,
            "events": len(placed.events),
            "recorded": call.recorded,
            "recording_uuid": placed.recording and placed.recording.recording_uuid,
        }
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
