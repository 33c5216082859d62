"""The session as this service knows it, and how it is written to and read from Redis."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

import msgspec

from service import strictjson
from service.phones import mask


class Status(StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    IN_PROGRESS = "in_progress"
    EXPIRED = "expired"
    FAILED = "failed"


# The store's scripts record some of these by name: a test checks they name only these.
class NotificationKind(StrEnum):
    """What a notification to the app tells of (its ``type``)."""

    ACTIVE = "session.active"
    FAILED = "session.failed"
    CALL_ENDED = "session.call_ended"
    RECORDING_STORED = "session.recording_stored"
    EXPIRED = "session.expired"


LIVE = frozenset({Status.ACTIVE, Status.IN_PROGRESS})
FINAL = frozenset({Status.EXPIRED, Status.FAILED})

# VTS's optional create fields that apps may set; the subset they may change later.
CREATE_OPTIONS = (
    "record",
    "record_file_format",
    "session_expiry",
    "call_time_limit",
    "ring_timeout",
    "initiate_call_to_first_party",
    "first_party_play_url",
    "second_party_play_url",
)
UPDATE_OPTIONS = tuple(o for o in CREATE_OPTIONS if o != "initiate_call_to_first_party")


# Money is kept in Redis as whole billionths, so a Lua script can add it exactly.
NANOS = Decimal(10) ** 9


def to_nanos(amount: Decimal) -> int:
    return int((amount * NANOS).to_integral_value())


def from_nanos(nanos: int) -> Decimal:
    """The exact amount, without trailing zeros (and never in exponent form)."""
    text = f"{Decimal(nanos).scaleb(-9):f}"
    return Decimal(text.rstrip("0").rstrip(".") if "." in text else text)


def now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    if moment.tzinfo is not UTC:  # nearly every moment here is in UTC already
        moment = moment.astimezone(UTC)
    return moment.isoformat(timespec="milliseconds")


def _moment(raw: str | None) -> datetime | None:
    return datetime.fromisoformat(raw) if raw else None


# Counters are what the applied events add up to, plus the adjustment the last
# reconciliation with VTS made (``adjust_<name>``): events never overwrite VTS's word and
# reconciliation never loses an event that is applied after it.
COUNTERS = ("interaction_count", "call_count", "billed_duration", "call_amount_nanos")


def _nonzero(count: int) -> str | None:
    return str(count) if count else None


def _compact_json(value: Mapping[str, Any]) -> str:
    return msgspec.json.encode(value).decode() if value else "{}"


def _counter(fields: Mapping[str, str], name: str) -> int:
    return int(fields.get(name, 0)) + int(fields.get(f"adjust_{name}", 0))


@dataclass(frozen=True)
class Session:
    id: str
    status: Status
    first_party: str
    second_party: str
    created_at: datetime
    updated_at: datetime
    options: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    callback_url: str | None = None
    request_id: str | None = None
    app: str | None = None
    vts_session_uuid: str | None = None
    virtual_number: str | None = None
    expires_at: datetime | None = None
    last_interaction_at: datetime | None = None
    interaction_count: int = 0
    call_count: int = 0
    billed_duration: int = 0
    call_amount: Decimal = Decimal("0")
    error_code: str | None = None
    error_message: str | None = None

    def __repr__(self) -> str:
        return (
            f"Session(id={self.id!r}, status={self.status.value!r}, "
            f"first_party={mask(self.first_party)!r}, second_party={mask(self.second_party)!r})"
        )

    def to_fields(self) -> dict[str, str]:
        """The Redis hash of this session (every value a string).

        Unset values and zero counters are left out: ``from_fields`` reads them back as
        None and 0, and the workers' scripts treat a missing counter as 0 (HINCRBY).
        """
        created_at = iso(self.created_at)
        updated_at = created_at if self.updated_at == self.created_at else iso(self.updated_at)
        raw: dict[str, str | None] = {
            "id": self.id,
            "status": self.status.value,
            "first_party": self.first_party,
            "second_party": self.second_party,
            "created_at": created_at,
            "updated_at": updated_at,
            "options": _compact_json(self.options),
            "metadata": _compact_json(self.metadata),
            "callback_url": self.callback_url,
            "request_id": self.request_id,
            "app": self.app,
            "vts_session_uuid": self.vts_session_uuid,
            "virtual_number": self.virtual_number,
            "expires_at": iso(self.expires_at),
            "last_interaction_at": iso(self.last_interaction_at),
            "interaction_count": _nonzero(self.interaction_count),
            "call_count": _nonzero(self.call_count),
            "billed_duration": _nonzero(self.billed_duration),
            "call_amount_nanos": _nonzero(to_nanos(self.call_amount)),
            "error_code": self.error_code,
            "error_message": self.error_message,
        }
        return {k: v for k, v in raw.items() if v is not None}

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> Session:
        return cls(
            id=fields["id"],
            status=Status(fields["status"]),
            first_party=fields["first_party"],
            second_party=fields["second_party"],
            created_at=datetime.fromisoformat(fields["created_at"]),
            updated_at=datetime.fromisoformat(fields["updated_at"]),
            options=strictjson.loads(fields.get("options") or "{}"),
            metadata=strictjson.loads(fields.get("metadata") or "{}"),
            callback_url=fields.get("callback_url"),
            request_id=fields.get("request_id"),
            app=fields.get("app"),
            vts_session_uuid=fields.get("vts_session_uuid"),
            virtual_number=fields.get("virtual_number"),
            expires_at=_moment(fields.get("expires_at")),
            last_interaction_at=_moment(fields.get("last_interaction_at")),
            interaction_count=_counter(fields, "interaction_count"),
            call_count=_counter(fields, "call_count"),
            billed_duration=_counter(fields, "billed_duration"),
            call_amount=from_nanos(_counter(fields, "call_amount_nanos")),
            error_code=fields.get("error_code"),
            error_message=fields.get("error_message"),
        )

    def with_changes(self, **changes: Any) -> Session:
        return replace(self, **changes)
