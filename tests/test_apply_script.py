"""The apply script (``apply_event.lua``) on its own: each outcome, nothing written before
every value is checked, and its readings of VTS's values the same as Python's
(``datetime.fromisoformat`` for EventTimestamp, ``Decimal`` for Amount) were."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import hypothesis
import pytest
import redis
from hypothesis import strategies as st

from service import schemas
from service.models import iso, to_nanos
from service.store import StoredEvents, scripts, timeline_entry
from service.store.keys import CHANNEL, TIMELINE_LIMIT, Keys

NOW = "2026-03-01T12:00:00.000+00:00"
CLOCK_MS = 1_772_366_400_000
RECONCILE_AFTER = {"timeout": 5000, "leg_end": 15000, "leg_complete": 15000}
LEG = {
    "EventName": "SessionFirstPartyHangup",
    "EventTimestamp": "2026-02-28 23:59:58",
    "SequenceNumber": "7",
    "Duration": "42",
    "BilledDuration": "60",
    "Amount": "0.00850",
    "HangupCause": "NORMAL_CLEARING",
    "HangupCauseCode": "4000",
}


class Run:
    """One session claimed by one VTS session, and callbacks stored for it as the web
    stores them; ``apply`` runs the script on one of them."""

    def __init__(self, client: redis.Redis, *, claimed: bool = True, session: bool = True):
        self.client = client
        self.session_id = f"ses_{uuid.uuid4().hex}"
        self.vts_uuid = str(uuid.uuid4())
        self.script = client.register_script(scripts.APPLY_EVENT)
        if claimed:
            client.set(Keys.vts_session(self.vts_uuid), self.session_id)
        if session:
            fields = ["status", "active", "index_member", f"0:{self.session_id}"]
            client.hset(Keys.session(self.session_id), items=fields)

    def store(self, params: dict[str, str] | str, received_ms: int = 1000) -> str:
        event_id = uuid.uuid4().hex
        text = params if isinstance(params, str) else json.dumps(params)
        record = ["kind", "session", "params", text, "received_ms", str(received_ms)]
        self.client.hset(Keys.webhook(event_id), items=record)
        self.client.zadd(Keys.in_flight(self.vts_uuid), {event_id: received_ms})
        return event_id

    def apply(self, event_id: str, **overrides: Any) -> list[Any]:
        arguments = {
            "event_id": event_id, "now": NOW, "clock_ms": str(CLOCK_MS), "purge_at": "99",
            "reconcile_after": RECONCILE_AFTER, "session_key": Keys.session("{id}"),
            "applied_key": Keys.applied("{id}"), "timeline_key": Keys.timeline("{id}"),
            "channel": CHANNEL, "status_prefix": Keys.index() + ":status:",
            "timeline_limit": TIMELINE_LIMIT,
        } | overrides  # fmt: skip
        keys = [
            Keys.webhook(event_id),
            Keys.vts_session(self.vts_uuid),
            Keys.in_flight(self.vts_uuid),
            Keys.event_stats(),
            Keys.schedule(),
        ]
        reply = self.script(keys=keys, args=[json.dumps(arguments)])
        return [item.decode() if isinstance(item, bytes) else item for item in reply]

    def timeline(self) -> list[dict[str, Any]]:
        raw = self.client.lrange(Keys.timeline(self.session_id), 0, -1)
        return [json.loads(entry) for entry in raw]

    def written(self) -> list[Any]:
        """Everything an applied event writes besides the in-flight set."""
        return [
            self.client.hgetall(Keys.session(self.session_id)),
            self.client.exists(Keys.applied(self.session_id), Keys.timeline(self.session_id)),
            self.client.exists(Keys.event_stats(), Keys.schedule()),
        ]


@pytest.fixture
def run(redis_client: redis.Redis) -> Run:
    return Run(redis_client)


def test_an_applied_leg_end_adds_its_values_and_its_timeline_entry(run: Run) -> None:
    """Applied: the counters, the marker, the in-flight set left, the timeline entry in
    the shape and order Python's ``timeline_entry`` gives, the reconciliation scheduled."""
    event_id = run.store(LEG)
    reply = run.apply(event_id)
    assert reply == ["applied", "", run.session_id, LEG["EventName"], "7", "active", "active", 0]
    session = run.client.hgetall(Keys.session(run.session_id))
    assert (session[b"call_count"], session[b"billed_duration"]) == (b"1", b"60")
    assert session[b"call_amount_nanos"] == b"8500000"
    assert run.client.smembers(Keys.applied(run.session_id)) == {b"seq:7"}
    assert run.client.zcard(Keys.in_flight(run.vts_uuid)) == 0
    expected = json.loads(
        timeline_entry(
            "vts_event", name=LEG["EventName"], sequence=7,
            event_time="2026-02-28T23:59:58.000+00:00", duration="42", billed_duration="60",
            amount="0.00850", hangup_cause="NORMAL_CLEARING", hangup_cause_code="4000",
        )
    ) | {"at": NOW}  # fmt: skip
    [entry] = run.timeline()
    assert list(entry.items()) == list(expected.items())
    assert schemas.timeline_entry(dict(entry)) == schemas.timeline_entry(expected)
    reconcile = run.client.zscore(Keys.schedule(), f"reconcile:{run.session_id}")
    assert reconcile == CLOCK_MS + 15000


def test_an_event_without_values_has_a_bare_timeline_entry(run: Run) -> None:
    """A progress event: sequence and time only on the timeline, no reconciliation."""
    params = {"EventName": "SessionFirstPartyAnswer", "SequenceNumber": "0012"}
    assert run.apply(run.store(params))[:5] == [
        "applied", "", run.session_id, "SessionFirstPartyAnswer", "12"
    ]  # fmt: skip
    [entry] = run.timeline()
    assert entry == {"at": NOW, "type": "vts_event", "name": "SessionFirstPartyAnswer",
                     "sequence": 12, "event_time": NOW}  # fmt: skip
    assert run.client.smembers(Keys.applied(run.session_id)) == {b"seq:12"}
    assert run.client.zcard(Keys.schedule()) == 0


def test_a_timeout_schedules_the_reconciliation_sooner(run: Run) -> None:
    """The role's delay from ``reconcile_after``; ending the session schedules its purge."""
    run.apply(run.store({"EventName": "SessionTimeout", "SequenceNumber": "3"}))
    schedule = run.client.zrange(Keys.schedule(), 0, -1, withscores=True)
    assert schedule == [
        (f"purge:{run.session_id}".encode(), 99),
        (f"reconcile:{run.session_id}".encode(), CLOCK_MS + 5000),
    ]


def test_a_redelivered_event_is_a_duplicate(run: Run) -> None:
    """Duplicate: the marker was applied; only the in-flight set changes."""
    event_id = run.store(LEG)
    run.apply(event_id)
    written = run.written()
    run.client.zadd(Keys.in_flight(run.vts_uuid), {event_id: 1})
    assert run.apply(event_id)[:3] == ["duplicate", "", run.session_id]
    assert run.written() == written
    assert run.client.zcard(Keys.in_flight(run.vts_uuid)) == 0


def test_a_claimed_session_that_is_gone_is_missing(redis_client: redis.Redis) -> None:
    """Missing: the VTS session names a session with no record; nothing written."""
    run = Run(redis_client, session=False)
    assert run.apply(run.store(LEG))[:3] == ["missing", "", run.session_id]
    assert run.written() == [{}, 0, 0]


def test_an_event_of_an_erased_session_is_refused(run: Run) -> None:
    """Erased: the session keeps its counters as erasure left them; nothing written."""
    run.client.hset(Keys.session(run.session_id), "erased_at", NOW)
    assert run.apply(run.store(LEG))[:3] == ["erased", "", run.session_id]
    written = run.written()
    assert b"call_count" not in written[0]
    assert written[1:] == [0, 0]


def test_a_callback_no_longer_stored_is_expired(run: Run) -> None:
    """Expired: nothing to read, nothing written."""
    assert run.apply("0" * 32)[0] == "expired"
    assert run.written()[1:] == [0, 0]


def test_an_event_of_an_unclaimed_vts_session_says_when_it_came(
    redis_client: redis.Redis,
) -> None:
    """no_session: the received time, for the caller to wait or set the event aside."""
    run = Run(redis_client, claimed=False)
    assert run.apply(run.store(LEG, received_ms=1234))[:5] == [
        "no_session", "1234", "", LEG["EventName"], "7"
    ]  # fmt: skip
    assert run.client.zcard(Keys.in_flight(run.vts_uuid)) == 1


@pytest.mark.parametrize(
    ("argument", "value"),
    [("clock_ms", "soon"), ("purge_at", ""), ("marker", ""), ("virtual_number", 5)],
)
def test_a_bad_argument_is_invalid_before_anything_is_written(
    run: Run, argument: str, value: Any
) -> None:
    """Each argument the script checks: a bad one is ``invalid`` naming it."""
    event_id = run.store(LEG)
    written = run.written()
    assert run.apply(event_id, **{argument: value})[:2] == ["invalid", argument]
    assert run.written() == written
    assert run.client.zcard(Keys.in_flight(run.vts_uuid)) == 1
    assert run.apply(event_id)[0] == "applied"


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ("not json", "params"),
        ('"a string"', "params"),
        ({"SequenceNumber": "1"}, "EventName"),
        (LEG | {"SequenceNumber": "1e3"}, "SequenceNumber"),
        (LEG | {"SequenceNumber": "1" * 16}, "SequenceNumber"),
        (LEG | {"BilledDuration": "86401"}, "BilledDuration"),
        (LEG | {"BilledDuration": "-1"}, "BilledDuration"),
        (LEG | {"BilledDuration": "6 0"}, "BilledDuration"),
        (LEG | {"Amount": "1000.000000001"}, "Amount"),
        (LEG | {"Amount": "0.0000000001"}, "Amount"),
        (LEG | {"Amount": "-0.5"}, "Amount"),
        (LEG | {"Amount": "NaN"}, "Amount"),
        (LEG | {"Amount": "1e"}, "Amount"),
    ],
)
def test_an_impossible_value_is_invalid_before_anything_is_written(
    run: Run, params: dict[str, str] | str, reason: str
) -> None:
    """Each value the script checks: an impossible one is ``invalid`` naming it."""
    event_id = run.store(params)
    written = run.written()
    assert run.apply(event_id)[:2] == ["invalid", reason]
    assert run.written() == written
    assert run.client.zcard(Keys.in_flight(run.vts_uuid)) == 1


@pytest.mark.parametrize(
    "params",
    [
        {"EventName": "SessionVirtualNumberReplaced", "SequenceNumber": "4",
         "VirtualNumber": "14152000077"},
        {"EventName": "SessionFirstPartyAnswer"},
        {"EventName": "SessionFirstPartyAnswer", "SequenceNumber": "0"},
    ],
)  # fmt: skip
def test_what_only_the_caller_computes_is_asked_for_then_used(
    run: Run, params: dict[str, str]
) -> None:
    """needs: a new virtual number, or a marker for an event without a sequence number
    (or 0); the params come back, nothing is written; given the answers it applies."""
    event_id = run.store(params)
    written = run.written()
    reply = run.apply(event_id)
    assert reply[:3] == ["needs", json.dumps(params), run.session_id]
    assert run.written() == written
    answers = {"marker": "id:abc", "virtual_number": "+14152000077"}
    assert run.apply(event_id, **answers)[0] == "applied"
    assert run.client.smembers(Keys.applied(run.session_id)) == {b"id:abc"}
    number = run.client.hget(Keys.session(run.session_id), "virtual_number")
    replaced = params["EventName"] == "SessionVirtualNumberReplaced"
    assert number == (b"+14152000077" if replaced else None)


def test_an_unreadable_virtual_number_changes_none(run: Run) -> None:
    """A 'number' event answered with '' applies and keeps the session's number."""
    params = {"EventName": "SessionVirtualNumberReplaced", "SequenceNumber": "4"}
    assert run.apply(run.store(params), virtual_number="")[0] == "applied"
    assert run.client.hget(Keys.session(run.session_id), "virtual_number") is None


def test_the_store_applies_in_one_call(redis_client: redis.Redis) -> None:
    """``StoredEvents.apply_event`` passes the store's keys and arguments and decodes the reply."""
    run = Run(redis_client)
    applied = StoredEvents(redis_client).apply_event(
        run.store(LEG), run.vts_uuid, clock=datetime.now(UTC), reconcile_after=RECONCILE_AFTER
    )
    assert (applied.outcome, applied.session_id, applied.sequence) == ("applied", run.session_id, 7)
    assert (applied.name, applied.before, applied.after) == (LEG["EventName"], "active", "active")


# What Python read before the script did: the oracles of the properties below.
def python_event_time(text: str) -> str:
    try:
        return iso(datetime.fromisoformat(text.strip()).replace(tzinfo=UTC)) or ""
    except ValueError:
        return NOW


def python_nanos(text: str) -> str | None:
    try:
        amount = Decimal(text or "0")
    except InvalidOperation:
        return None
    if not (amount.is_finite() and 0 <= amount <= 1000):
        return None
    nanos = to_nanos(amount)
    return str(nanos) if Decimal(nanos).scaleb(-9) == amount else None


def python_billed(text: str) -> str | None:
    text = text or "0"
    try:
        return str(int(text)) if text.isdigit() and int(text) <= 86_400 else None
    except ValueError:  # isdigit() takes superscripts that int() refuses
        return None


def _digits(low: int, high: int) -> st.SearchStrategy[str]:
    return st.text("0123456789", min_size=low, max_size=high)


_DATES = st.tuples(
    st.sampled_from(["2026", "2024", "1900", "2000", "0001", "0000", "9999"]),
    st.sampled_from(["01", "02", "12", "13", "00"]),
    st.sampled_from(["01", "28", "29", "30", "31", "32", "00"]),
).map("-".join)
_CLOCKS = st.one_of(
    st.just(""),
    st.tuples(
        st.sampled_from(["T", "t", " "]),
        st.sampled_from(["00", "09", "23", "24"]),
        st.sampled_from(["", ":00", ":59", ":60"]),
        st.sampled_from(["", ":00", ":59", ":60"]),
        st.one_of(st.just(""), st.tuples(st.sampled_from(".,"), _digits(1, 10)).map("".join)),
        st.sampled_from(["", "Z", "+00:00", "-05:30", "+0530", "+05", "+23:59", "+24:00",
                         "+05:75", "-00:00"]),
    ).map("".join),
)  # fmt: skip
_TIMESTAMPS = st.tuples(st.sampled_from(["", " ", "\t"]), _DATES, _CLOCKS).map("".join)
_ODD_PIECES = ["2026-01-01", "T", " ", "x", "10", ":00", ":0", ".", ",5", "Z", "z", "+05:30",
               "+05:30:15", " +0000 UTC", "W01", "-1", "20260101", "\u00e9", "\u0662"]  # fmt: skip


def _lua_readings(client: redis.Redis, field: str, texts: list[str]) -> list[str | None]:
    """What the script makes of each text as ``field``: the event time on the timeline,
    or the billionths or seconds it adds (None for invalid)."""
    run = Run(client)
    found: list[str | None] = []
    for number, text in enumerate(texts, start=1):
        params = LEG | {"SequenceNumber": str(number), field: text}
        before = run.client.hgetall(Keys.session(run.session_id))
        reply = run.apply(run.store(params))
        if reply[0] == "invalid":
            found.append(None)
            continue
        after = run.client.hgetall(Keys.session(run.session_id))
        counter = {"Amount": b"call_amount_nanos", "BilledDuration": b"billed_duration"}
        if field in counter:
            gained = int(after[counter[field]]) - int(before.get(counter[field], 0))
            found.append(str(gained))
        else:
            found.append(run.timeline()[-1]["event_time"])
    return found


# The property tests here compare the script with Python's readings, on the shared Redis.
_AGAINST_PYTHON = hypothesis.settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture],
)


@_AGAINST_PYTHON
@hypothesis.given(texts=st.lists(_TIMESTAMPS, min_size=1, max_size=20))
def test_event_times_are_read_as_python_read_them(
    redis_client: redis.Redis, texts: list[str]
) -> None:
    """Timestamps of the forms the script reads: the same time Python's fromisoformat
    gave (zone dropped, milliseconds), or the same fallback to now."""
    assert _lua_readings(redis_client, "EventTimestamp", texts) == [
        python_event_time(t) for t in texts
    ]


@_AGAINST_PYTHON
@hypothesis.given(
    texts=st.lists(
        st.one_of(
            st.lists(st.sampled_from(_ODD_PIECES), max_size=6).map("".join),
            st.text(max_size=30),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_other_event_times_fall_back_or_agree(redis_client: redis.Redis, texts: list[str]) -> None:
    """Any other text: the script never reads a time Python would not have; it falls
    back to now where fromisoformat took rarer forms (week dates, basic format)."""
    found_all = _lua_readings(redis_client, "EventTimestamp", texts)
    for text, found in zip(texts, found_all, strict=True):
        assert found in (python_event_time(text), NOW), text


_AMOUNTS = st.tuples(
    st.sampled_from(["", " ", "\t"]),
    st.sampled_from(["", "+", "-"]),
    _digits(0, 5),
    st.sampled_from(["", "."]),
    _digits(0, 12),
    st.one_of(st.just(""), st.tuples(st.sampled_from("eE"), st.sampled_from(["", "+", "-"]),
                                     _digits(0, 3)).map("".join)),
    st.sampled_from(["", " "]),
).map("".join)  # fmt: skip


@_AGAINST_PYTHON
@hypothesis.given(texts=st.lists(_AMOUNTS, min_size=1, max_size=20))
def test_amounts_are_read_as_decimal_read_them(redis_client: redis.Redis, texts: list[str]) -> None:
    """Decimal text (sign, exponent, spaces): the same billionths Python counted, or
    invalid where it was."""
    assert _lua_readings(redis_client, "Amount", texts) == [python_nanos(t) for t in texts]


@hypothesis.settings(_AGAINST_PYTHON, max_examples=100)
@hypothesis.given(
    texts=st.lists(
        st.one_of(_digits(0, 8), st.text(max_size=8), st.sampled_from(["86400", "086400", "_1"])),
        min_size=1,
        max_size=20,
    )
)
def test_billed_seconds_are_read_as_python_read_them(
    redis_client: redis.Redis, texts: list[str]
) -> None:
    """BilledDuration: ASCII digits up to a day, as before; digits of other scripts, which
    Python took, are invalid."""
    found_all = _lua_readings(redis_client, "BilledDuration", texts)
    for text, found in zip(texts, found_all, strict=True):
        assert found == python_billed(text) or (found is None and not text.isascii()), text
