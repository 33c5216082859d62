"""The app API's typed models: what a request may hold and what a response holds.

One source for three things: the web decodes create and change requests with them
(:mod:`service.web.validation`), encodes every session, list, timeline and notification with
them, and :mod:`service.web.openapi` builds its JSON Schemas from them. A field added here is
validated, answered and documented at once.

Bounds are our own (VTS documents none): session_expiry 60..86400 s, call_time_limit
60..14400 s, ring_timeout 5..120 s, URLs up to 2048 characters, metadata up to 2 KiB.
In requests, ``null`` is the same as leaving an option out; in responses every field is
present and an option the app did not set is ``null``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from service.models import NotificationKind, Status, iso
from service.models import Session as StoredSession
from service.recordings import Recording as StoredRecording
from service.recordings import RecordingStatus
from service.store.notifications import Notification as StoredNotification

MAX_URL = 2048
MAX_PHONE = 32
INT_BOUNDS = {
    "session_expiry": (60, 86400),
    "call_time_limit": (60, 14400),
    "ring_timeout": (5, 120),
}

Url = Annotated[str, msgspec.Meta(max_length=MAX_URL, extra_json_schema={"format": "uri"})]
Phone = Annotated[
    str,
    msgspec.Meta(max_length=MAX_PHONE, description="E.164: +, country code, number"),
]
Format = Literal["mp3", "wav"]
Moment = Annotated[str, msgspec.Meta(extra_json_schema={"format": "date-time"})]
Count = Annotated[int, msgspec.Meta(ge=0)]
Metadata = Annotated[
    dict[str, Any],
    msgspec.Meta(description="the app's own references: at most 2 KiB of JSON (UTF-8)"),
]


SessionExpiry = Annotated[
    int, msgspec.Meta(ge=INT_BOUNDS["session_expiry"][0], le=INT_BOUNDS["session_expiry"][1],
                      description="seconds")
]  # fmt: skip
CallTimeLimit = Annotated[
    int, msgspec.Meta(ge=INT_BOUNDS["call_time_limit"][0], le=INT_BOUNDS["call_time_limit"][1],
                      description="seconds")
]  # fmt: skip
RingTimeout = Annotated[
    int, msgspec.Meta(ge=INT_BOUNDS["ring_timeout"][0], le=INT_BOUNDS["ring_timeout"][1],
                      description="seconds")
]  # fmt: skip


class UpdateSession(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """The options a live session can still change; give at least one."""

    record: bool | None = None
    record_file_format: Format | None = None
    session_expiry: SessionExpiry | None = None
    call_time_limit: CallTimeLimit | None = None
    ring_timeout: RingTimeout | None = None
    first_party_play_url: Url | None = None
    second_party_play_url: Url | None = None


class CreateSession(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A request for a masked connection between two parties."""

    first_party: Phone
    second_party: Phone
    record: bool | None = None
    record_file_format: Format | None = None
    session_expiry: SessionExpiry | None = None
    call_time_limit: CallTimeLimit | None = None
    ring_timeout: RingTimeout | None = None
    initiate_call_to_first_party: bool | None = None
    first_party_play_url: Url | None = None
    second_party_play_url: Url | None = None
    callback_url: Annotated[
        Url | None,
        msgspec.Meta(description="the app's https receiver of notifications (webhooks)"),
    ] = None
    metadata: Metadata | None = None


class Recording(msgspec.Struct):
    """A call recording of the session; ``url`` serves its audio once it is stored."""

    id: str
    status: RecordingStatus
    format: Format
    duration: Annotated[int | None, msgspec.Meta(description="seconds")]
    size: Annotated[int | None, msgspec.Meta(description="bytes")]
    sha256: str | None
    url: str | None
    created_at: Moment


class SessionError(msgspec.Struct):
    """Why the session failed: VTS's code and reason."""

    code: str
    message: str


class NotificationSession(msgspec.Struct):
    """The session as a notification shows it: without the parties' numbers."""

    id: str
    status: Status
    vts_session_uuid: str | None
    virtual_number: str | None
    record: bool | None
    record_file_format: Format | None
    session_expiry: SessionExpiry | None
    call_time_limit: CallTimeLimit | None
    ring_timeout: RingTimeout | None
    initiate_call_to_first_party: bool | None
    first_party_play_url: str | None
    second_party_play_url: str | None
    callback_url: str | None
    created_at: Moment
    updated_at: Moment
    expires_at: Moment | None
    last_interaction_at: Moment | None
    interaction_count: Count
    call_count: Count
    billed_duration: Annotated[int, msgspec.Meta(ge=0, description="seconds")]
    call_amount: Annotated[str, msgspec.Meta(description="decimal")]
    recordings: list[Recording]
    error: SessionError | None
    metadata: Metadata


class Session(NotificationSession):
    """A masked connection, as the service knows it now."""

    first_party: Phone
    second_party: Phone


class SessionList(msgspec.Struct):
    """A page of sessions, newest first; ``next_cursor`` is null on the last page."""

    data: list[Session]
    next_cursor: str | None


TimelineType = Literal[
    "requested",
    "created",
    "failed",
    "update_requested",
    "updated",
    "update_failed",
    "update_rejected",
    "end_requested",
    "expired",
    "vts_event",
    "recording",
    "recording_stored",
    "recording_failed",
    "recording_deleted",
    "reconciled",
    "erased",
]


class TimelineEntry(msgspec.Struct, omit_defaults=True):
    """One thing that happened to the session. Which fields are present depends on
    ``type``; durations are whole seconds, amounts decimal strings."""

    at: Moment
    type: TimelineType
    request_id: str | None = None
    app: str | None = None
    vts_session_uuid: str | None = None
    adopted: bool | None = None
    code: str | None = None
    message: str | None = None
    changes: list[str] | None = None
    reason: str | None = None
    name: Annotated[str | None, msgspec.Meta(description="VTS's EventName")] = None
    sequence: int | None = None
    event_time: str | None = None
    duration: Annotated[int | None, msgspec.Meta(description="seconds")] = None
    billed_duration: Annotated[int | None, msgspec.Meta(description="seconds")] = None
    amount: Annotated[str | None, msgspec.Meta(description="decimal")] = None
    hangup_cause: str | None = None
    hangup_cause_code: str | None = None
    recording_id: str | None = None
    size: Annotated[int | None, msgspec.Meta(description="bytes")] = None
    drift: dict[str, Any] | None = None


class Timeline(msgspec.Struct):
    """What happened to the session, oldest first: VTS events by their ``event_time``,
    other entries by ``at``."""

    session_id: str
    data: list[TimelineEntry]


class FieldProblem(msgspec.Struct):
    field: str
    message: str


class Problem(msgspec.Struct, omit_defaults=True):
    """An error (RFC 9457); ``errors`` names each bad field."""

    type: Annotated[str, msgspec.Meta(extra_json_schema={"format": "uri"})]
    title: str
    status: int
    detail: str
    errors: list[FieldProblem] | None = None


class Notification(msgspec.Struct):
    """What the app's ``callback_url`` receives, signed the Standard Webhooks way."""

    type: NotificationKind
    timestamp: Moment
    data: NotificationSession


class NotificationAttempt(msgspec.Struct, omit_defaults=True):
    """One try at delivering a notification: the receiver's HTTP status, or the class of
    the error that kept it from answering (e.g. ``ConnectError``, ``egress_refused``)."""

    at: Moment
    latency_ms: Annotated[float, msgspec.Meta(description="milliseconds")]
    status: int | None = None
    error: str | None = None


NotificationState = Literal["pending", "delivered", "failed", "discarded"]


class NotificationRecord(msgspec.Struct):
    """A notification sent (or being sent) to the app, with every attempt, oldest first."""

    id: Annotated[str, msgspec.Meta(description="its webhook-id: the same on every attempt")]
    type: NotificationKind
    session_id: str
    created_at: Moment
    state: NotificationState
    next_attempt_at: Moment | None
    attempts: list[NotificationAttempt]


class NotificationList(msgspec.Struct):
    """The session's notifications, oldest first."""

    session_id: str
    data: list[NotificationRecord]


class Recover(msgspec.Struct, forbid_unknown_fields=True):
    """Which notifications to send again: those created since ``since`` not delivered."""

    since: Annotated[Moment, msgspec.Meta(description="an ISO 8601 time with its zone")]


class Recovery(msgspec.Struct):
    since: Moment
    queued: Annotated[int, msgspec.Meta(description="notifications queued again")]


class PingRequest(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Where to send a ``ping``; by default, the app's endpoint (the callback URL of its
    latest notification)."""

    url: Url | None = None


class PingData(msgspec.Struct):
    app: str


class PingNotification(msgspec.Struct):
    """The ``ping`` event: signed like every notification, it tells of nothing."""

    type: Literal["ping"]
    timestamp: Moment
    data: PingData


class Ping(msgspec.Struct):
    """A ping's one attempt; ``delivered`` when the endpoint answered 2xx."""

    id: str
    url: Url
    delivered: bool
    attempt: NotificationAttempt


def notification_record(stored: StoredNotification) -> NotificationRecord:
    return NotificationRecord(
        id=stored.id,
        type=stored.type,
        session_id=stored.session_id,
        created_at=stored.created_at,
        state=stored.state.value,
        next_attempt_at=stored.next_attempt_at,
        attempts=[NotificationAttempt(**msgspec.structs.asdict(a)) for a in stored.attempts],
    )


def recording(stored: StoredRecording) -> Recording:
    live = stored.status is RecordingStatus.STORED
    return Recording(
        id=stored.id,
        status=stored.status,
        format=stored.format,  # type: ignore[arg-type]  # "mp3" or "wav" by construction
        duration=stored.duration,
        size=stored.size,
        sha256=stored.sha256,
        url=f"/v1/recordings/{stored.id}" if live else None,
        created_at=iso(stored.created_at) or "",
    )


def _shown(recordings: Iterable[StoredRecording]) -> list[Recording]:
    return [recording(r) for r in recordings]


def _common(session: StoredSession, recordings: Iterable[StoredRecording]) -> dict[str, Any]:
    options = session.options
    error = (
        SessionError(session.error_code, session.error_message or "")
        if session.error_code
        else None
    )
    return {
        "id": session.id,
        "status": session.status,
        "vts_session_uuid": session.vts_session_uuid,
        "virtual_number": session.virtual_number,
        "record": options.get("record"),
        "record_file_format": options.get("record_file_format"),
        "session_expiry": options.get("session_expiry"),
        "call_time_limit": options.get("call_time_limit"),
        "ring_timeout": options.get("ring_timeout"),
        "initiate_call_to_first_party": options.get("initiate_call_to_first_party"),
        "first_party_play_url": options.get("first_party_play_url"),
        "second_party_play_url": options.get("second_party_play_url"),
        "callback_url": session.callback_url,
        "created_at": iso(session.created_at),
        "updated_at": iso(session.updated_at),
        "expires_at": iso(session.expires_at),
        "last_interaction_at": iso(session.last_interaction_at),
        "interaction_count": session.interaction_count,
        "call_count": session.call_count,
        "billed_duration": session.billed_duration,
        "call_amount": str(session.call_amount),
        "recordings": _shown(recordings),
        "error": error,
        "metadata": dict(session.metadata),
    }


def session(stored: StoredSession, recordings: Iterable[StoredRecording] = ()) -> Session:
    """The session as the API shows it, with its recordings (oldest first)."""
    return Session(
        first_party=stored.first_party,
        second_party=stored.second_party,
        **_common(stored, recordings),
    )


def notification(
    kind: NotificationKind,
    stored: StoredSession,
    recordings: Iterable[StoredRecording],
    moment: datetime,
) -> Notification:
    """The body of a notification to the app; never the parties' numbers."""
    return Notification(
        type=kind,
        timestamp=moment.isoformat(),
        data=NotificationSession(**_common(stored, recordings)),
    )


# VTS sends these as text; the timeline shows them as whole numbers, like the session.
_WHOLE = ("duration", "billed_duration", "sequence", "size")


def timeline_entry(raw: dict[str, Any]) -> TimelineEntry:
    """A stored timeline entry as the API shows it (numbers that VTS sent as text, whole).

    Raises msgspec.ValidationError for an entry that cannot be shown."""
    for name in _WHOLE:
        value = raw.get(name)
        if isinstance(value, str):
            raw[name] = _whole(value)
    return msgspec.convert(raw, TimelineEntry, strict=False)


def _whole(text: str) -> int | None:
    try:
        return round(float(text)) if text.strip() else None
    except ValueError:
        return None


_ENCODER = msgspec.json.Encoder()


def encode(value: Any) -> bytes:
    return _ENCODER.encode(value)
