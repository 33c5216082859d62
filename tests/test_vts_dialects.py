"""Reading both VTS response dialects into VtsSession."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from structlog.testing import capture_logs

from service.vts.dialects import (
    MalformedResponse,
    parse_session,
    parse_session_list,
    parse_session_page,
)
from service.vts.models import VtsInteraction, VtsSession

# The response printed in reference/vts-create-session-seed.txt, verbatim.
SEED = json.loads(
    """{
"session_uuid": "abcd-1234-ab12-cd34",
"virtual_number": "+12205550020",
"status": "active",
"first_party": "+14155552345",
"second_party": "+12165554567",
"record": "false",
"recording_callback_url":"null",
"record_file_format": null,
"session_expiry": "3600",
"call_time_limit": "3600",
"initiate_call_to_first_party": "false",
"callback_url": "null",
"ring_timeout": "120",
"first_party_play_url": "null",
"second_party_play_url": "null",
"created_time": "2023-08-17 21:26:44",
"modified_time": "null",
"expiry_time": "null",
"last_interaction_time": "null",
"total_call_count": "0",
"total_call_amount": "0",
"total_call_billed_duration": "0",
"interaction": "{}"
}"""
)

INTERACTION = {
    "start_time": "2024-01-03 13:40:00 +0000 UTC",
    "end_time": "2024-01-03 13:41:05.250000 +0000 UTC",
    "first_party_resource_url": "https://api.vtscom.net/v1/Account/MA1/Call/call-aaa/",
    "second_party_resource_url": "https://api.vtscom.net/v1/Account/MA1/Call/call-bbb",
    "first_party_status": "completed",
    "second_party_status": "completed",
    "type": "call",
    "total_call_count": 2,
    "call_billed_duration": 120,
    "total_call_amount": Decimal("0.0065"),
    "duration": 65,
    "recording_resource_url": "https://api.vtscom.net/v1/Account/MA1/Recording/rec-1/",
}


def envelope_session(**overrides: Any) -> dict[str, Any]:
    session: dict[str, Any] = {
        "session_uuid": "5f2b1c3e-7e4d-4e0a-9a55-2f1c2d3e4f50",
        "virtual_number": "12205550020",
        "status": "active",
        "first_party": "14155552345",
        "second_party": "12165554567",
        "record": True,
        "record_file_format": "mp3",
        "recording_callback_url": "https://svc.example/webhooks/vts/recording",
        "recording_callback_method": "POST",
        "session_expiry": 3600,
        "call_time_limit": 600,
        "initiate_call_to_first_party": False,
        "callback_url": "https://svc.example/webhooks/vts/session",
        "callback_method": "POST",
        "ring_timeout": 45,
        "first_party_play_url": "",
        "second_party_play_url": "",
        "created_time": "2024-01-03 13:35:51.521304 +0000 UTC",
        "modified_time": "2024-01-03 13:35:51 +0000 UTC",
        "expiry_time": "2024-01-03 14:35:51 +0000 +0000",
        "last_interaction_time": "",
        "duration": 3600,
        "amount": 0,
        "total_call_count": 0,
        "total_call_amount": Decimal("0.0"),
        "total_call_billed_duration": 0,
        "total_session_amount": Decimal("0.005"),
        "interaction": None,
    }
    session.update(overrides)
    return session


def test_seed_bare_create_response() -> None:
    """The seed page's bare-dialect create response reads into typed fields."""
    session = parse_session(SEED)
    assert session == VtsSession(
        session_uuid="abcd-1234-ab12-cd34",
        virtual_number="+12205550020",
        status="active",
        first_party="+14155552345",
        second_party="+12165554567",
        record=False,
        session_expiry=3600,
        call_time_limit=3600,
        initiate_call_to_first_party=False,
        ring_timeout=120,
        created_time=datetime(2023, 8, 17, 21, 26, 44, tzinfo=UTC),
        total_call_count=0,
        total_call_amount=Decimal(0),
        total_call_billed_duration=0,
        interactions=(),
    )


def test_envelope_create_response() -> None:
    """The envelope create response: real JSON types, numbers without '+', Go timestamps."""
    payload = {
        "api_id": "a1",
        "message": "Session created",
        "session_uuid": "5f2b1c3e-7e4d-4e0a-9a55-2f1c2d3e4f50",
        "virtual_number": "+12205550020",
        "session": envelope_session(),
    }
    session = parse_session(payload)
    assert session.virtual_number == "+12205550020"
    assert (session.first_party, session.second_party) == ("+14155552345", "+12165554567")
    assert session.record is True
    assert session.initiate_call_to_first_party is False
    assert session.call_time_limit == 600
    assert session.first_party_play_url is None
    assert session.created_time == datetime(2024, 1, 3, 13, 35, 51, 521304, tzinfo=UTC)
    assert session.expiry_time == datetime(2024, 1, 3, 14, 35, 51, tzinfo=UTC)
    assert session.last_interaction_time is None
    assert session.total_session_amount == Decimal("0.005")
    assert session.amount == Decimal(0)
    assert session.interactions is None


def test_envelope_top_level_fills_missing_session_fields() -> None:
    """A create envelope's top-level session_uuid and virtual_number fill in for the session."""
    inner = envelope_session(session_uuid="", virtual_number=None)
    payload = {"api_id": "a1", "session_uuid": "top-uuid", "virtual_number": "+12205550020"}
    session = parse_session({**payload, "session": inner})
    assert session.session_uuid == "top-uuid"
    assert session.virtual_number == "+12205550020"


def test_envelope_session_fields_win_over_top_level() -> None:
    """When both carry a value, the session object's own value is kept."""
    payload = {"session_uuid": "top", "virtual_number": "+12165554567"}
    session = parse_session({**payload, "session": envelope_session()})
    assert session.session_uuid == "5f2b1c3e-7e4d-4e0a-9a55-2f1c2d3e4f50"
    assert session.virtual_number == "+12205550020"


def test_envelope_get_response_with_interactions() -> None:
    """The get envelope reads, including its interaction records and call UUIDs."""
    response = envelope_session(status="expired", interaction=[INTERACTION])
    session = parse_session({"api_id": "a2", "response": response})
    assert session.status == "expired"
    assert session.interactions == (
        VtsInteraction(
            start_time=datetime(2024, 1, 3, 13, 40, tzinfo=UTC),
            end_time=datetime(2024, 1, 3, 13, 41, 5, 250000, tzinfo=UTC),
            first_party_call_uuid="call-aaa",
            second_party_call_uuid="call-bbb",
            first_party_status="completed",
            second_party_status="completed",
            total_call_count=2,
            call_billed_duration=120,
            total_call_amount=Decimal("0.0065"),
            duration=65,
            recording_resource_url="https://api.vtscom.net/v1/Account/MA1/Recording/rec-1/",
        ),
    )


def test_update_response_without_session_object() -> None:
    """An update answer that carries only top-level fields still reads."""
    session = parse_session({"api_id": "a", "message": "Session updated", "session_uuid": "u1"})
    assert session == VtsSession(session_uuid="u1")


def test_bare_interaction_string_holds_json() -> None:
    """A bare-dialect interaction is a string of JSON; its numbers become typed values."""
    records = [{k: str(v) for k, v in INTERACTION.items()}]
    session = parse_session({**SEED, "interaction": json.dumps(records)})
    assert session.interactions is not None
    (interaction,) = session.interactions
    assert interaction.total_call_amount == Decimal("0.0065")
    assert interaction.call_billed_duration == 120
    assert interaction.first_party_call_uuid == "call-aaa"


def test_bare_interaction_json_with_float_money_stays_exact() -> None:
    """Money inside an interaction string is parsed as Decimal, never float."""
    session = parse_session({**SEED, "interaction": '[{"total_call_amount": 0.1}]'})
    assert session.interactions is not None
    assert session.interactions[0].total_call_amount == Decimal("0.1")


def test_broken_interaction_json_is_none_and_logged() -> None:
    """Broken interaction JSON leaves interactions None, logs the field, keeps the rest."""
    with capture_logs() as logs:
        session = parse_session({**SEED, "interaction": '[{"start_time": "2024-01-0'})
    assert session.interactions is None
    assert session.total_call_count == 0
    assert logs == [
        {
            "event": "vts_field_unreadable",
            "field": "interaction",
            "value_type": "str",
            "log_level": "warning",
        }
    ]


@pytest.mark.parametrize("value", [None, "null", "", "None"])
def test_null_interaction_is_none(value: object) -> None:
    """No interaction (null in any spelling) reads as None."""
    assert parse_session({**SEED, "interaction": value}).interactions is None


@pytest.mark.parametrize("value", ["{}", "[]", {}, []])
def test_empty_interaction_is_empty_tuple(value: object) -> None:
    """An empty interaction object or list reads as no interactions."""
    assert parse_session({**SEED, "interaction": value}).interactions == ()


def test_single_interaction_object_reads_as_one_record() -> None:
    """An interaction given as one object rather than a list is one record."""
    session = parse_session({**SEED, "interaction": json.dumps({"duration": "12"})})
    assert session.interactions == (VtsInteraction(duration=12),)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-03 13:35:51 +0000 UTC", datetime(2024, 1, 3, 13, 35, 51, tzinfo=UTC)),
        (
            "2024-01-03 13:35:51.521304 +0000 UTC",
            datetime(2024, 1, 3, 13, 35, 51, 521304, tzinfo=UTC),
        ),
        (
            "2024-01-03 13:35:51.521304123 +0000 UTC",
            datetime(2024, 1, 3, 13, 35, 51, 521304, tzinfo=UTC),
        ),
        ("2024-01-03 13:35:51 +0000 +0000", datetime(2024, 1, 3, 13, 35, 51, tzinfo=UTC)),
        ("2024-01-03 19:05:51 +0530 IST", datetime(2024, 1, 3, 13, 35, 51, tzinfo=UTC)),
        ("2023-08-17 21:26:44", datetime(2023, 8, 17, 21, 26, 44, tzinfo=UTC)),
        (" 2023-08-17 21:26:44", datetime(2023, 8, 17, 21, 26, 44, tzinfo=UTC)),
        ("2023-08-17 21:26", datetime(2023, 8, 17, 21, 26, tzinfo=UTC)),
        ("2023-08-17T21:26:44Z", datetime(2023, 8, 17, 21, 26, 44, tzinfo=UTC)),
        ("2023-08-17T21:26:44.5+00:00", datetime(2023, 8, 17, 21, 26, 44, 500000, tzinfo=UTC)),
        ("2023-08-17T16:26:44-05:00", datetime(2023, 8, 17, 21, 26, 44, tzinfo=UTC)),
        (
            "2024-01-03 13:35:51.5 +0000 UTC m=+0.004",
            datetime(2024, 1, 3, 13, 35, 51, 500000, tzinfo=UTC),
        ),
    ],
)
def test_every_timestamp_form_is_aware_utc(text: str, expected: datetime) -> None:
    """Every timestamp form VTS writes reads as the same aware UTC instant."""
    created = parse_session({**SEED, "created_time": text}).created_time
    assert created == expected
    assert created is not None
    assert created.utcoffset() is not None
    assert created.tzinfo is UTC


@pytest.mark.parametrize("value", ["yesterday", "2024-13-45 10:00:00", "2024-01-03 10:00 XYZ", 17])
def test_unreadable_timestamp_is_none_and_logged(value: object) -> None:
    """An unreadable timestamp is logged by field name and left None."""
    with capture_logs() as logs:
        session = parse_session({**SEED, "created_time": value})
    assert session.created_time is None
    assert [entry["field"] for entry in logs] == ["created_time"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), ("false", False), ("TRUE", True), (True, True), (False, False), (1, True)],
)
def test_booleans(value: object, expected: bool) -> None:
    """Booleans arrive as JSON booleans or as strings."""
    assert parse_session({**SEED, "record": value}).record is expected


@pytest.mark.parametrize("value", ["null", "NULL", "", "None", " null ", None])
def test_null_spellings_are_none(value: object) -> None:
    """Every null spelling is None for every kind of field, without a log line."""
    fields = ["record", "session_expiry", "total_call_amount", "created_time", "first_party"]
    with capture_logs() as logs:
        session = parse_session({**SEED, **dict.fromkeys(fields, value)})
    assert session.record is None
    assert session.session_expiry is None
    assert session.total_call_amount is None
    assert session.created_time is None
    assert session.first_party is None
    assert logs == []


@pytest.mark.parametrize("value", ["0.123", 0.123, Decimal("0.123"), " 0.123"])
def test_money_is_decimal(value: object) -> None:
    """Money is an exact Decimal from strings, JSON numbers and floats alike."""
    amount = parse_session({**SEED, "total_call_amount": value}).total_call_amount
    assert amount == Decimal("0.123")
    assert isinstance(amount, Decimal)


@pytest.mark.parametrize(("value", "expected"), [("3600", 3600), (3600, 3600), ("3600.0", 3600)])
def test_integers(value: object, expected: int) -> None:
    """Whole numbers arrive as strings or JSON numbers."""
    assert parse_session({**SEED, "session_expiry": value}).session_expiry == expected


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("session_expiry", "an hour"),
        ("session_expiry", "12.5"),
        ("session_expiry", True),
        ("record", "maybe"),
        ("total_call_amount", "NaN"),
        ("total_call_amount", "free"),
        ("status", 3),
        ("callback_url", ["x"]),
    ],
)
def test_unparseable_field_is_none_and_logged(field: str, value: object) -> None:
    """An unparseable field is logged by name and left None; the rest reads."""
    with capture_logs() as logs:
        session = parse_session({**SEED, field: value})
    assert getattr(session, field) is None
    assert session.first_party == "+14155552345"
    assert [(entry["event"], entry["field"]) for entry in logs] == [("vts_field_unreadable", field)]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("14155552345", "+14155552345"),
        ("+14155552345", "+14155552345"),
        (14155552345, "+14155552345"),
        ("+1 415-555-2345", "+14155552345"),
        ("+447700900123", "+447700900123"),  # unknown to phonenumbers, still E.164-shaped
    ],
)
def test_numbers_become_e164(value: object, expected: str) -> None:
    """Numbers, with or without '+', become E.164 with '+'."""
    assert parse_session({**SEED, "first_party": value}).first_party == expected


def test_unreadable_number_is_logged_without_its_value() -> None:
    """An unreadable number is None, and the log line names the field, not the value."""
    with capture_logs() as logs:
        session = parse_session({**SEED, "second_party": "call me 4155552345x"})
    assert session.second_party is None
    assert logs == [
        {
            "event": "vts_field_unreadable",
            "field": "second_party",
            "value_type": "str",
            "log_level": "warning",
        }
    ]


@pytest.mark.parametrize(
    "payload",
    [
        [],
        "session",
        None,
        {},
        {"api_id": "a", "error": "not found"},
        {"session_uuid": "null"},
        {"session_uuid": 42},
        {"api_id": "a", "response": {"meta": {}, "objects": []}},
    ],
)
def test_response_without_session_uuid_is_malformed(payload: object) -> None:
    """A response without a readable session_uuid is MalformedResponse (a ValueError)."""
    with pytest.raises(MalformedResponse):
        parse_session(payload)
    assert issubclass(MalformedResponse, ValueError)


def test_repr_masks_phone_numbers() -> None:
    """A session's repr keeps only the last four digits of each number."""
    text = repr(parse_session(SEED))
    assert "abcd-1234-ab12-cd34" in text
    for number in ("2205550020", "4155552345", "2165554567"):
        assert number not in text
    assert "first_party='***2345'" in text
    assert "virtual_number='***0020'" in text


def test_envelope_list_response() -> None:
    """The envelope list reads every object and what meta says about the next page."""
    objects = [envelope_session(session_uuid="u1"), envelope_session(session_uuid="u2")]
    meta = {"limit": 2, "offset": 0, "total_count": 5, "next": "/v1/...?offset=2", "previous": None}
    page = parse_session_page({"api_id": "a", "response": {"meta": meta, "objects": objects}})
    assert [s.session_uuid for s in page.sessions] == ["u1", "u2"]
    assert page.total_count == 5
    assert page.has_next is True


def test_bare_list_with_meta_at_top_level() -> None:
    """A bare list has meta and objects at top level, with string values."""
    meta = {"limit": "20", "offset": "0", "total_count": "1", "next": "null", "previous": "null"}
    page = parse_session_page({"meta": meta, "objects": [SEED]})
    assert page.sessions == [parse_session(SEED)]
    assert (page.total_count, page.has_next) == (1, False)


def test_top_level_json_list() -> None:
    """A list response may be a plain JSON list of sessions."""
    sessions = parse_session_list([SEED, {**SEED, "session_uuid": "other"}])
    assert [s.session_uuid for s in sessions] == ["abcd-1234-ab12-cd34", "other"]


def test_empty_list() -> None:
    """An empty objects list is no sessions."""
    assert parse_session_list({"api_id": "a", "response": {"meta": {}, "objects": []}}) == []


@pytest.mark.parametrize(
    "payload",
    [
        {"api_id": "a", "response": {"meta": {}}},
        {"objects": "not json"},
        {"objects": [{"status": "active"}]},
        {"objects": ["u1"]},
        "[]",
    ],
)
def test_unreadable_list_is_malformed(payload: object) -> None:
    """A list without objects, or with a session lacking its uuid, is MalformedResponse."""
    with capture_logs(), pytest.raises(MalformedResponse):
        parse_session_list(payload)
