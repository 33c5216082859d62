"""What goes in and out of the store besides recordings and stored callbacks (whose
modules decode their own hashes): outcomes, pages, cursors, event changes, timeline
entries, and decoding of sessions."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from service.models import Session, Status, iso, now

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class CreateOutcome:
    """``result`` is ``created``, ``replay`` (same key, same body), ``conflict`` or
    ``throttled`` (the app has spent its VTS budget; try after ``retry_after_ms``)."""

    result: str
    session_id: str
    retry_after_ms: int = 0


@dataclass(frozen=True)
class EventChange:
    """What one VTS event does to a session, in the terms of ``apply_event.lua``."""

    event_id: str
    marker: str
    role: str
    party: str
    sequence: int | None
    billed: int
    amount_nanos: int
    at: str
    entry: str
    session_uuid: str
    virtual_number: str | None = None
    reconcile_at: datetime | None = None


@dataclass(frozen=True)
class Applied:
    """What applying an event did. ``outcome``: ``applied``, ``duplicate``, ``missing``
    (no such session) or ``invalid`` (then ``before`` names the bad argument)."""

    outcome: str
    before: str = ""
    after: str = ""
    interactions: int = 0
    wants_news: bool = False


@dataclass(frozen=True)
class Page:
    """``skipped``: stored sessions left out of the page because they cannot be read."""

    sessions: list[Session]
    next_cursor: str | None
    skipped: int = 0


class InvalidCursor(ValueError):
    pass


# One encoder, built once: json.dumps builds a new one per call when given separators.
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))


def timeline_entry(kind: str, **detail: Any) -> str:
    return _COMPACT_JSON.encode({"at": iso(now()), "type": kind, **detail})


def decode_str(value: bytes | str) -> str:
    """A Redis reply as text (our clients do not decode responses, to share dramatiq's)."""
    return value.decode() if isinstance(value, bytes) else value


def decode_session(raw: Mapping[bytes | str, bytes | str]) -> Session | None:
    return (
        Session.from_fields({decode_str(k): decode_str(v) for k, v in raw.items()}) if raw else None
    )


def decode_sessions(
    rows: Sequence[Mapping[bytes | str, bytes | str]],
) -> tuple[list[Session], int]:
    """The sessions ``rows`` hold, and how many were left out because they cannot be read.

    One bad record (written by an older version, or by hand) must not break a whole list.
    """
    sessions, skipped = [], 0
    for row in rows:
        try:
            session = decode_session(row)
        except (KeyError, ValueError, TypeError) as exc:
            skipped += 1
            log.warning("session_unreadable", session_id=_row_id(row), error=type(exc).__name__)
            continue
        if session is not None:
            sessions.append(session)
    return sessions, skipped


def _row_id(row: Mapping[bytes | str, bytes | str]) -> str | None:
    found = row.get(b"id", row.get("id"))
    return None if found is None else decode_str(found)[:64]


def hash_args(fields: Mapping[str, str]) -> list[str]:
    """``fields`` as the flat field, value, field, value... list a script's ARGV takes
    (HSET's form)."""
    return [item for pair in fields.items() for item in pair]


def index_member(session: Session) -> str:
    """The session's entry in the (lexicographically ordered) indexes: its app first, so
    each app's sessions are one contiguous range, newest last.

    The time is in microseconds: one web process can answer two creates within a
    millisecond, and at millisecond resolution they would be listed in the order of
    their random ids. Members written with milliseconds (13 digits) still sort among
    these by their first 13 digits; only within one millisecond is the order of the two
    forms arbitrary."""
    created = session.created_at
    micros = int(created.timestamp()) * 1_000_000 + created.microsecond
    return f"{session.app or ''}:{micros:016d}:{session.id}"


def app_range(app: str) -> tuple[str, str]:
    """The ZRANGEBYLEX bounds of ``app``'s entries: every member starting ``app:``."""
    return f"[{app}:", f"({app};"


def member_session_id(member: str) -> str:
    return member.rpartition(":")[2]


def encode_cursor(member: str) -> str:
    return base64.urlsafe_b64encode(member.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, app: str) -> str:
    """The index member a cursor points at; InvalidCursor unless it is one of ``app``'s."""
    try:
        member = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except ValueError as exc:  # binascii.Error, UnicodeDecodeError, or not ASCII at all
        raise InvalidCursor("cursor is not one this service gave out") from exc
    owner, _, rest = member.partition(":")
    millis, _, session_id = rest.partition(":")
    if owner != app or not (millis.isdigit() and session_id):
        raise InvalidCursor("cursor is not one this service gave out")
    return member


def statuses(allowed: Sequence[Status]) -> str:
    return " ".join(status.value for status in allowed)
