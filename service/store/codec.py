"""What the store's concept modules share: what applying an event did
(``apply_event.lua`` crosses concepts), timeline entries, and reading Redis replies as
text. Each concept module decodes its own records."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import msgspec

from service.models import iso, now


class ApplyOutcome(StrEnum):
    """What applying a stored event did (see ``apply_event.lua``)."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    MISSING = "missing"
    ERASED = "erased"
    EXPIRED = "expired"
    NO_SESSION = "no_session"
    INVALID = "invalid"
    NEEDS = "needs"


@dataclass(frozen=True)
class Applied:
    """What applying a stored event did (see ``apply_event.lua`` for the outcomes):
    ``detail`` says which value was ``invalid``, when a ``no_session`` event was received
    (epoch ms) or what a ``needs`` answer asks about (the callback's params, JSON).
    ``name`` and ``sequence`` are the event's, once read."""

    outcome: ApplyOutcome
    detail: str = ""
    session_id: str = ""
    name: str = ""
    sequence: int | None = None
    before: str = ""
    after: str = ""
    interactions: int = 0


def timeline_entry(kind: str, **detail: Any) -> str:
    return msgspec.json.encode({"at": iso(now()), "type": kind, **detail}).decode()


def decode_str(value: bytes | str) -> str:
    """A Redis reply as text (our clients do not decode responses, to share dramatiq's)."""
    return value.decode() if isinstance(value, bytes) else value
