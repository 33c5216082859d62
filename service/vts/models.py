"""What VTS tells us about a masking session, whichever dialect it spoke.

Every field but ``session_uuid`` may be ``None``: VTS leaves fields out, sends ``"null"``,
or sends something we cannot read. Numbers are E.164 with ``+``, times are aware UTC,
money is :class:`~decimal.Decimal`, durations are whole seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from decimal import Decimal

from service.phones import mask

_PHONE_FIELDS = frozenset({"virtual_number", "first_party", "second_party"})


@dataclass(frozen=True, kw_only=True)
class VtsInteraction:
    """One call between the parties, as VTS records it in a session's ``interaction``."""

    start_time: datetime | None = None
    end_time: datetime | None = None
    first_party_call_uuid: str | None = None
    second_party_call_uuid: str | None = None
    first_party_status: str | None = None
    second_party_status: str | None = None
    total_call_count: int | None = None
    call_billed_duration: int | None = None
    total_call_amount: Decimal | None = None
    duration: int | None = None
    recording_resource_url: str | None = None


@dataclass(frozen=True, kw_only=True, repr=False)
class VtsSession:
    """A VTS masking session. Its ``repr`` masks the phone numbers (it reaches logs)."""

    session_uuid: str
    virtual_number: str | None = None
    first_party: str | None = None
    second_party: str | None = None
    status: str | None = None
    record: bool | None = None
    record_file_format: str | None = None
    session_expiry: int | None = None
    call_time_limit: int | None = None
    ring_timeout: int | None = None
    initiate_call_to_first_party: bool | None = None
    callback_url: str | None = None
    recording_callback_url: str | None = None
    first_party_play_url: str | None = None
    second_party_play_url: str | None = None
    created_time: datetime | None = None
    modified_time: datetime | None = None
    expiry_time: datetime | None = None
    last_interaction_time: datetime | None = None
    duration: int | None = None
    amount: Decimal | None = None
    total_call_count: int | None = None
    total_call_amount: Decimal | None = None
    total_call_billed_duration: int | None = None
    total_session_amount: Decimal | None = None
    interactions: tuple[VtsInteraction, ...] | None = None

    def __repr__(self) -> str:
        parts = []
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name in _PHONE_FIELDS and value is not None:
                value = mask(value)
            parts.append(f"{field.name}={value!r}")
        return f"{type(self).__name__}({', '.join(parts)})"
