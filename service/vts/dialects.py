"""Reading VTS's two response dialects into :mod:`service.vts.models`.

*Envelope* (current Plivo): ``{"api_id", "message", "session_uuid", "virtual_number",
"session": {...}}`` for create and update, ``{"api_id", "response": {...}}`` for get,
``{"api_id", "response": {"meta": {...}, "objects": [...]}}`` for list; real JSON types,
numbers perhaps without ``+``, Go-style timestamps (``2024-01-03 13:35:51 +0000 UTC``).

*Bare* (the VTS pages): the session at top level, every value a string (``"false"``,
``"3600"``, ``"null"``), zone-less UTC timestamps, ``interaction`` as a string of JSON.

A field we cannot read is logged by name (never by value: it may be a phone number) and
left ``None``; only a response without a ``session_uuid`` is unreadable as a whole
(:class:`MalformedResponse`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, TypeVar

import structlog

from service.phones import InvalidNumber, normalise
from service.vts.models import VtsInteraction, VtsSession

log = structlog.get_logger(__name__)

T = TypeVar("T")

_NULLS = frozenset({"", "null", "none", "nil"})
_COERCION_ERRORS = (ValueError, TypeError, ArithmeticError)

# Date, time (seconds and fraction optional), then zone tokens: "+0000", "+00:00", "UTC",
# "Z", repeated or not ("+0000 UTC", "+0000 +0000"), and Go's monotonic "m=+0.01".
_TIMESTAMP = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?\s*(.*)", re.ASCII
)
_OFFSET = re.compile(r"([+-])(\d{2}):?(\d{2})", re.ASCII)
_UTC_NAMES = frozenset({"UTC", "GMT", "Z", "UT"})
# What VTS may write for a number that phonenumbers' metadata does not (yet) know.
_LOOSE_NUMBER = re.compile(r"\+?\d{8,15}", re.ASCII)


class MalformedResponse(ValueError):
    """A 2xx body we cannot read as the expected VTS object. Never holds the body."""


@dataclass(frozen=True)
class SessionPage:
    """One page of a list response. ``has_next`` is ``None`` when VTS sent no ``meta``."""

    sessions: list[VtsSession]
    total_count: int | None
    has_next: bool | None


def parse_session(payload: object) -> VtsSession:
    """Read a create, update or get response (either dialect) into a :class:`VtsSession`.

    Raises :class:`MalformedResponse` when no session with a ``session_uuid`` is in it.
    """
    if not isinstance(payload, Mapping):
        raise MalformedResponse("expected a JSON object")
    session = payload.get("session")
    response = payload.get("response")
    if isinstance(session, Mapping):
        merged = dict(session)
        for key in ("session_uuid", "virtual_number"):
            if _is_null(merged.get(key)):
                merged[key] = payload.get(key)
        return _session(merged)
    if isinstance(response, Mapping):
        return _session(response)
    return _session(payload)


def parse_session_list(payload: object) -> list[VtsSession]:
    """Read a list response (either dialect, or a bare JSON list) into sessions."""
    return parse_session_page(payload).sessions


def parse_session_page(payload: object) -> SessionPage:
    """Like :func:`parse_session_list`, keeping what ``meta`` says about further pages."""
    if isinstance(payload, list):
        return SessionPage([_session(item) for item in payload], None, None)
    if not isinstance(payload, Mapping):
        raise MalformedResponse("expected a JSON object or list")
    response = payload.get("response")
    body = response if isinstance(response, Mapping) else payload
    objects = body.get("objects")
    if isinstance(objects, str):
        objects = _json_or_none("objects", objects)
    if not isinstance(objects, list):
        raise MalformedResponse("list response without objects")
    meta = body.get("meta")
    if not isinstance(meta, Mapping):
        return SessionPage([_session(item) for item in objects], None, None)
    return SessionPage(
        [_session(item) for item in objects],
        total_count=_field(meta, "total_count", _int),
        has_next=not _is_null(meta.get("next")),
    )


def _session(obj: object) -> VtsSession:
    if not isinstance(obj, Mapping):
        raise MalformedResponse("expected a session object")
    session_uuid = _field(obj, "session_uuid", _text)
    if not session_uuid:
        raise MalformedResponse("session without session_uuid")
    interaction = obj.get("interaction", obj.get("interactions"))
    return VtsSession(
        session_uuid=session_uuid,
        virtual_number=_field(obj, "virtual_number", _phone),
        first_party=_field(obj, "first_party", _phone),
        second_party=_field(obj, "second_party", _phone),
        status=_field(obj, "status", _text),
        record=_field(obj, "record", _bool),
        record_file_format=_field(obj, "record_file_format", _text),
        session_expiry=_field(obj, "session_expiry", _int),
        call_time_limit=_field(obj, "call_time_limit", _int),
        ring_timeout=_field(obj, "ring_timeout", _int),
        initiate_call_to_first_party=_field(obj, "initiate_call_to_first_party", _bool),
        callback_url=_field(obj, "callback_url", _text),
        recording_callback_url=_field(obj, "recording_callback_url", _text),
        first_party_play_url=_field(obj, "first_party_play_url", _text),
        second_party_play_url=_field(obj, "second_party_play_url", _text),
        created_time=_field(obj, "created_time", _timestamp),
        modified_time=_field(obj, "modified_time", _timestamp),
        expiry_time=_field(obj, "expiry_time", _timestamp),
        last_interaction_time=_field(obj, "last_interaction_time", _timestamp),
        duration=_field(obj, "duration", _int),
        amount=_field(obj, "amount", _decimal),
        total_call_count=_field(obj, "total_call_count", _int),
        total_call_amount=_field(obj, "total_call_amount", _decimal),
        total_call_billed_duration=_field(obj, "total_call_billed_duration", _int),
        total_session_amount=_field(obj, "total_session_amount", _decimal),
        interactions=_interactions(interaction),
    )


def _interactions(value: object) -> tuple[VtsInteraction, ...] | None:
    """``None`` when VTS says nothing (or nothing readable); ``()`` for ``{}`` or ``[]``."""
    if isinstance(value, str):
        value = None if _is_null(value) else _json_or_none("interaction", value)
    if _is_null(value):
        return None
    if isinstance(value, Mapping):
        value = [value] if value else []
    if not isinstance(value, list):
        _unreadable("interaction", value)
        return None
    records = []
    for item in value:
        if isinstance(item, Mapping):
            records.append(_interaction(item))
        else:
            _unreadable("interaction", item)
    return tuple(records)


def _interaction(obj: Mapping[str, Any]) -> VtsInteraction:
    return VtsInteraction(
        start_time=_field(obj, "start_time", _timestamp),
        end_time=_field(obj, "end_time", _timestamp),
        first_party_call_uuid=_field(obj, "first_party_resource_url", _last_segment),
        second_party_call_uuid=_field(obj, "second_party_resource_url", _last_segment),
        first_party_status=_field(obj, "first_party_status", _text),
        second_party_status=_field(obj, "second_party_status", _text),
        total_call_count=_field(obj, "total_call_count", _int),
        call_billed_duration=_field(obj, "call_billed_duration", _int),
        total_call_amount=_field(obj, "total_call_amount", _decimal),
        duration=_field(obj, "duration", _int),
        recording_resource_url=_field(obj, "recording_resource_url", _text),
    )


def _field(obj: Mapping[str, Any], name: str, coerce: Callable[[object], T]) -> T | None:
    value = obj.get(name)
    if _is_null(value):
        return None
    try:
        return coerce(value)
    except _COERCION_ERRORS:
        _unreadable(name, value)
        return None


def _unreadable(name: str, value: object) -> None:
    # The value itself stays out of the log: it may be (or hold) a phone number.
    log.warning("vts_field_unreadable", field=name, value_type=type(value).__name__)


def _is_null(value: object) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in _NULLS)


def _json_or_none(name: str, text: str) -> object:
    try:
        return json.loads(text, parse_float=Decimal)
    except ValueError:
        _unreadable(name, text)
        return None


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return value.strip()


def _last_segment(value: object) -> str:
    segment = _text(value).rstrip("/").rsplit("/", 1)[-1]
    if not segment:
        raise ValueError("no path segment")
    return segment


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("true", "1"):
            return True
        if text in ("false", "0"):
            return False
    raise ValueError("expected a boolean")


def _decimal(value: object) -> Decimal:
    if isinstance(value, bool):
        raise TypeError("expected a number")
    if isinstance(value, float):
        value = str(value)  # the shortest repr, so 0.1 stays 0.1
    if isinstance(value, str):
        value = value.strip()
    if not isinstance(value, int | str | Decimal):
        raise TypeError("expected a number")
    number = Decimal(value)
    if not number.is_finite():
        raise ValueError("expected a finite number")
    return number


def _int(value: object) -> int:
    number = _decimal(value)
    if number != number.to_integral_value():
        raise ValueError("expected a whole number")
    return int(number)


def _phone(value: object) -> str:
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else _text(value)
    try:
        return normalise(text)
    except InvalidNumber:
        # VTS owns its numbers; one our phonenumbers metadata does not know is still
        # VTS's number, so keep anything shaped like E.164 rather than lose it.
        compact = re.sub(r"[\s().-]", "", text)
        if _LOOSE_NUMBER.fullmatch(compact):
            return "+" + compact.lstrip("+")
        raise


def _timestamp(value: object) -> datetime:
    """Every form VTS writes, as aware UTC; a missing zone means UTC."""
    if isinstance(value, datetime):
        return _as_utc(value)
    match = _TIMESTAMP.fullmatch(_text(value))
    if match is None:
        raise ValueError("not a timestamp")
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    parsed = datetime(
        int(year),
        int(month),
        int(day),
        int(hour),
        int(minute),
        int(second or 0),
        int((fraction or "0")[:6].ljust(6, "0")),
        tzinfo=_zone(zone),
    )
    return parsed.astimezone(UTC)


def _zone(text: str) -> timezone:
    """The first numeric offset among the zone tokens, else UTC if they all name UTC."""
    tokens = [token for token in text.split() if not token.startswith("m=")]
    for token in tokens:
        offset = _OFFSET.fullmatch(token)
        if offset:
            sign, hours, minutes = offset.groups()
            delta = timedelta(hours=int(hours), minutes=int(minutes))
            return timezone(-delta if sign == "-" else delta)
    if all(token.upper() in _UTC_NAMES for token in tokens):
        return UTC
    raise ValueError("unknown time zone")


def _as_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)
