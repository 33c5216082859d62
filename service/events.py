"""VTS callback events: what arrives, checked and normalised.

Both routes take the same shape: a flat mapping of string fields. The web checks what it
must before making an event durable (the two ids, the formats and bounds of the fields we
act on, sizes); the workers normalise the rest when they apply it. Our bounds, since VTS
documents none: durations 0 to 86,400 s, ``Amount`` 0 to 1000 with at most 5 decimals.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import cached_property
from typing import Literal

Kind = Literal["session", "recording"]

MAX_FIELDS = 64
MAX_NAME = 64
MAX_VALUE = 2048

_EVENT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
_UUID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")
_FIELD_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
_DIGITS = re.compile(r"^[0-9]{1,12}$")
_SECONDS = re.compile(r"^[0-9]{1,5}$")
_AMOUNT = re.compile(r"^[0-9]{1,4}(\.[0-9]{1,5})?$")
_FORMATS = {
    "SequenceNumber": _DIGITS,
    "Duration": _SECONDS,
    "BilledDuration": _SECONDS,
    "RecordingDuration": _SECONDS,
    "Amount": _AMOUNT,
}
# What one call leg can plausibly report: VTS documents no bounds, these are ours.
MAX_SECONDS = 86_400
MAX_AMOUNT = Decimal(1000)

# Event names that end one call leg; SessionPartiesHangup ends the call between the parties.
LEG_ENDS = frozenset(
    {
        "SessionFirstPartyHangup",
        "SessionSecondPartyHangup",
        "SessionFirstPartyComplete",
        "SessionSecondPartyComplete",
        "SessionFirstPartyFailed",
        "SessionSecondPartyFailed",
    }
)
# Events of the family without SessionPartiesHangup that open a leg.
LEG_STARTS = frozenset({"SessionFirstPartyInitiated", "SessionSecondPartyInitiated"})
COMPLETE_FAMILY_ENDS = frozenset(n for n in LEG_ENDS if not n.endswith("Hangup"))
CALL_EVENTS = frozenset(
    {
        *LEG_ENDS,
        *LEG_STARTS,
        "SessionFirstPartyRinging",
        "SessionFirstPartyAnswer",
        "SessionSecondPartyRing",
        "SessionSecondPartyAnswer",
        "SessionVirtualNumberAnswer",
    }
)
PARTIES_HANGUP = "SessionPartiesHangup"
TIMEOUT = "SessionTimeout"
NUMBER_REPLACED = "SessionVirtualNumberReplaced"
KNOWN = frozenset(
    {*CALL_EVENTS, PARTIES_HANGUP, TIMEOUT, NUMBER_REPLACED, "SessionPinAuthenticationStatus"}
)


class InvalidEvent(ValueError):
    """The callback cannot be an event from VTS; the message says which field is wrong."""


@dataclass(frozen=True)
class Event:
    kind: Kind
    params: Mapping[str, str]

    @cached_property
    def id(self) -> str:
        """The same for every delivery of one event, so duplicates are recognised."""
        canonical = json.dumps([self.kind, sorted(self.params.items())], separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:32]

    @property
    def name(self) -> str:
        return self.params["EventName"]

    @property
    def session_uuid(self) -> str:
        return self.params["SessionUUID"]

    @property
    def sequence(self) -> int | None:
        raw = self.params.get("SequenceNumber")
        return int(raw) if raw else None

    def decimal(self, field: str) -> Decimal:
        try:
            return Decimal(self.params.get(field) or "0")
        except InvalidOperation:
            return Decimal("0")

    def integer(self, field: str) -> int:
        raw = self.params.get(field) or "0"
        return int(raw) if raw.isdigit() else 0


def check(kind: Kind, params: Mapping[str, str]) -> Event:
    """Return the event if its fields are plausible, else raise InvalidEvent."""
    if len(params) > MAX_FIELDS:
        raise InvalidEvent(f"at most {MAX_FIELDS} fields")
    for name, value in params.items():
        if not _FIELD_NAME.match(name):
            raise InvalidEvent("a field name is not a plain identifier")
        if len(value) > MAX_VALUE or "\x00" in value:
            raise InvalidEvent(f"{name}: too long or not text")
    if not _EVENT_NAME.match(params.get("EventName", "")):
        raise InvalidEvent("EventName: missing or malformed")
    if not _UUID.match(params.get("SessionUUID", "")):
        raise InvalidEvent("SessionUUID: missing or malformed")
    for name, pattern in _FORMATS.items():
        given = params.get(name)
        if given and not pattern.match(given):
            raise InvalidEvent(f"{name}: malformed")
    _check_bounds(params)
    return Event(kind, dict(params))


def _check_bounds(params: Mapping[str, str]) -> None:
    for name in ("Duration", "BilledDuration", "RecordingDuration"):
        if int(params.get(name) or 0) > MAX_SECONDS:
            raise InvalidEvent(f"{name}: more than {MAX_SECONDS} seconds")
    if Decimal(params.get("Amount") or 0) > MAX_AMOUNT:
        raise InvalidEvent(f"Amount: more than {MAX_AMOUNT}")
