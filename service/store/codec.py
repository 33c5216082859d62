"""What the store's concept modules share: an event's change and what applying it did
(``apply_event.lua`` crosses concepts), timeline entries, and reading and writing hash
fields. Each concept module decodes its own records."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec

from service.models import iso, now


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


_COMPACT_JSON = msgspec.json.Encoder()


def timeline_entry(kind: str, **detail: Any) -> str:
    return _COMPACT_JSON.encode({"at": iso(now()), "type": kind, **detail}).decode()


def decode_str(value: bytes | str) -> str:
    """A Redis reply as text (our clients do not decode responses, to share dramatiq's)."""
    return value.decode() if isinstance(value, bytes) else value


def hash_args(fields: Mapping[str, str]) -> list[str]:
    """``fields`` as the flat field, value, field, value... list a script's ARGV takes
    (HSET's form)."""
    return [item for pair in fields.items() for item in pair]
