"""How the sandbox writes sessions: VTS's two response dialects, and a plain internal form.

``envelope`` (current Plivo): create and update answer ``{"api_id", "message",
"session_uuid", "virtual_number", "session"}``, get ``{"api_id", "response"}``, list
``{"api_id", "response": {"meta", "objects"}}``. Values are real JSON types; numbers inside
a session lack their ``+`` (the top-level ``virtual_number`` keeps it); timestamps read
``2024-01-03 13:35:51.123456 +0000 UTC``; unset strings and times are ``""``;
``modified_time`` starts equal to ``created_time``.

``bare`` (the VTS pages): the session object itself at top level, beside ``api_id``, every
value a string: ``"false"``, ``"3600"``, ``"null"``, money with at least three decimals
(``"0.000"``), timestamps ``2023-08-17 21:26:44``, ``modified_time`` ``"null"`` until the
first update, and ``interaction`` a string of JSON, ``"{}"`` when there is none (as on the
VTS create page). VTS does not document a bare list; the sandbox answers ``{"api_id",
"meta", "objects"}`` with the meta values stringly too.

``interaction`` records (one per simulated call, see :mod:`devkit.sandbox.calls`)
follow their dialect: real JSON types and envelope timestamps in ``envelope`` (``null``
where unset), every value a string inside the JSON string in ``bare``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Literal

from devkit.sandbox.sessions import Session

Dialect = Literal["envelope", "bare"]

_PHONES = ("virtual_number", "first_party", "second_party")


def _moment(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


def _fields(session: Session, now: float) -> dict[str, object]:
    """Every field of the session object, in VTS's order, as Python values."""
    return {
        "session_uuid": session.session_uuid,
        "virtual_number": session.virtual_number,
        "status": session.status(now),
        "first_party": session.first_party,
        "second_party": session.second_party,
        **session.options,
        "created_time": _moment(session.created_time),
        "modified_time": _moment(session.modified_time),
        "expiry_time": _moment(session.expiry_time),
        "last_interaction_time": _moment(session.last_interaction_time),
        "duration": session.duration(now),
        "amount": session.amount,
        "total_call_count": session.total_call_count,
        "total_call_amount": session.total_call_amount,
        "total_call_billed_duration": session.total_call_billed_duration,
        "total_session_amount": session.amount + session.total_call_amount,
        "interaction": session.interaction,
    }


def _records(
    records: Sequence[dict[str, object]], convert: Callable[[object], object]
) -> list[dict[str, object]]:
    """The interaction records with every value converted for a dialect."""
    return [{name: convert(value) for name, value in record.items()} for record in records]


def _envelope_scalar(value: object) -> object:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f +0000 UTC")
    if isinstance(value, Decimal):
        # JSON has one number type. repr(float) is the shortest text that reads back as
        # the same float, so amounts of up to 15 digits reach the client as written.
        return float(value)
    return value


def _envelope_value(name: str, value: object) -> object:
    if name in _PHONES:
        return str(value).removeprefix("+")
    return "" if value is None else _envelope_scalar(value)


def envelope_session(session: Session, now: float) -> dict[str, object]:
    fields = _fields(session, now)
    fields["modified_time"] = fields["modified_time"] or fields["created_time"]
    body = {name: _envelope_value(name, value) for name, value in fields.items()}
    interaction = session.interaction
    body["interaction"] = None if interaction is None else _records(interaction, _envelope_scalar)
    return body


def money(amount: Decimal) -> str:
    """``Decimal("0")`` → ``"0.000"``; finer amounts keep all their digits."""
    whole, _, fraction = format(amount, "f").partition(".")
    return f"{whole}.{fraction.ljust(3, '0')}"


def _bare_value(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, Decimal):
        return money(value)
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def bare_session(session: Session, now: float) -> dict[str, str]:
    fields = _fields(session, now)
    fields["interaction"] = _records(session.interaction or [], _bare_value) or {}
    return {name: _bare_value(value) for name, value in fields.items()}


def change_body(
    dialect: Dialect, api_id: str, session: Session, now: float, message: str
) -> dict[str, object]:
    """The answer to create and update; ``message`` is VTS's, e.g. ``Session created``."""
    if dialect == "bare":
        return {"api_id": api_id, **bare_session(session, now)}
    return {
        "api_id": api_id,
        "message": message,
        "session_uuid": session.session_uuid,
        "virtual_number": session.virtual_number,
        "session": envelope_session(session, now),
    }


def session_body(dialect: Dialect, api_id: str, session: Session, now: float) -> dict[str, object]:
    """The answer to get."""
    if dialect == "bare":
        return {"api_id": api_id, **bare_session(session, now)}
    return {"api_id": api_id, "response": envelope_session(session, now)}


def page_body(
    dialect: Dialect,
    api_id: str,
    sessions: Sequence[Session],
    meta: dict[str, object],
    now: float,
) -> dict[str, object]:
    """The answer to list: ``meta`` holds limit, offset, total_count, next and previous."""
    if dialect == "bare":
        objects: list[dict[str, str]] = [bare_session(s, now) for s in sessions]
        stringly = {name: _bare_value(value) for name, value in meta.items()}
        return {"api_id": api_id, "meta": stringly, "objects": objects}
    page = {"meta": meta, "objects": [envelope_session(s, now) for s in sessions]}
    return {"api_id": api_id, "response": page}


def internal_session(session: Session, now: float) -> dict[str, object]:
    """The sandbox's own view for tests: E.164 numbers, ISO 8601 times, money as strings."""
    fields = _fields(session, now)
    fields = {name: _internal_value(value) for name, value in fields.items()}
    if session.interaction is not None:
        fields["interaction"] = _records(session.interaction, _internal_value)
    return fields


def _internal_value(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return money(value)
    return value
