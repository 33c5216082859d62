"""VTS callback events: what arrives, checked and normalised.

Both routes take the same shape: a flat mapping of string fields. The web checks what it
must before making an event durable (the two ids, the formats and bounds of the fields we
act on, sizes); the workers normalise the rest when they apply it. Our bounds, since VTS
documents none: durations 0 to 86,400 s, ``Amount`` 0 to 1000 with at most 5 decimals.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from functools import cached_property
from typing import Literal

import msgspec

from service.phones import mask, mask_text

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


class Role(StrEnum):
    """What a VTS session event does to a session (the apply script acts on the role).

    Every role's contribution to the counters is fixed by the event alone, so the totals
    are the same whatever order events arrive in; order only shapes status and timeline.
    """

    PROGRESS = "progress"  # a leg is being set up or is connected: a call is live
    LEG_END = "leg_end"  # a leg ended: one call, its billed seconds and amount
    # A leg answered and ended (the family without SessionPartiesHangup): a leg end, and
    # with the other party's answered leg ending next to it in sequence, one interaction.
    LEG_COMPLETE = "leg_complete"
    PARTIES_HANGUP = "parties_hangup"  # the call between the parties is over: one interaction
    TIMEOUT = "timeout"  # the session expired
    NUMBER = "number"  # the virtual number was replaced
    NOTE = "note"  # known, shown on the timeline, no effect
    UNKNOWN = "unknown"  # not in VTS's vocabulary: kept, counted, no effect


# VTS's session event vocabulary, both families, and what each event does.
ROLES: Mapping[str, Role] = {
    "SessionFirstPartyInitiated": Role.PROGRESS,
    "SessionFirstPartyRinging": Role.PROGRESS,
    "SessionFirstPartyAnswer": Role.PROGRESS,
    "SessionFirstPartyHangup": Role.LEG_END,
    "SessionFirstPartyComplete": Role.LEG_COMPLETE,
    "SessionFirstPartyFailed": Role.LEG_END,
    "SessionSecondPartyInitiated": Role.PROGRESS,
    "SessionSecondPartyRing": Role.PROGRESS,
    "SessionSecondPartyAnswer": Role.PROGRESS,
    "SessionSecondPartyHangup": Role.LEG_END,
    "SessionSecondPartyComplete": Role.LEG_COMPLETE,
    "SessionSecondPartyFailed": Role.LEG_END,
    # The caller dialled the virtual number and VTS answered it: the caller's leg is up.
    "SessionVirtualNumberAnswer": Role.PROGRESS,
    "SessionPartiesHangup": Role.PARTIES_HANGUP,
    "SessionTimeout": Role.TIMEOUT,
    "SessionVirtualNumberReplaced": Role.NUMBER,
    "SessionPinAuthenticationStatus": Role.NOTE,
}
LEG_ENDS = frozenset(n for n, r in ROLES.items() if r in (Role.LEG_END, Role.LEG_COMPLETE))
PARTIES_HANGUP = "SessionPartiesHangup"
KNOWN = frozenset(ROLES)


def role_of(name: str) -> Role:
    return ROLES.get(name, Role.UNKNOWN)


def party_of(name: str) -> str:
    """Whose leg the event is about: ``first``, ``second`` or ``""``."""
    if name.startswith("SessionFirstParty"):
        return "first"
    return "second" if name.startswith("SessionSecondParty") else ""


# Fields stored as they came: what the workers act on and operators read, none of them a
# party's number (the virtual number is VTS's, not a person's). Every other field is kept
# with its phone numbers masked: the parties' numbers live in the session record only.
_KEPT_AT_REST = frozenset(
    {
        "EventName",
        "EventTimestamp",
        "SessionUUID",
        "SequenceNumber",
        "VirtualNumber",
        "Duration",
        "BilledDuration",
        "Amount",
        "HangupCause",
        "HangupCauseCode",
        "RecordingUUID",
        "RecordingURL",
        "RecordingResourceURL",
        "RecordingFormat",
        "RecordingDuration",
        "RecordingStartTime",
        "RecordingEndTime",
    }
)


_PARTIES = frozenset({"From", "To", "FirstParty", "SecondParty"})


def at_rest(params: Mapping[str, str]) -> dict[str, str]:
    """The callback's fields as they may be stored: phone numbers masked (last 4 digits)."""
    return {name: _at_rest(name, value) for name, value in params.items()}


def _at_rest(name: str, value: str) -> str:
    if name in _KEPT_AT_REST:
        return value
    return mask(value) if name in _PARTIES and value else mask_text(value)


class InvalidEvent(ValueError):
    """The callback cannot be an event from VTS; the message says which field is wrong."""


@dataclass(frozen=True)
class Event:
    kind: Kind
    params: Mapping[str, str]

    @cached_property
    def canonical(self) -> bytes:
        """The event as one string: ``json.dumps`` of the kind and the sorted fields."""
        fields = [self.kind, sorted(self.params.items())]
        canonical = msgspec.json.encode(fields)
        # msgspec writes what json.dumps writes, but for characters that json.dumps
        # escapes (DEL and beyond ASCII) and msgspec writes as they are.
        if not canonical.isascii() or b"\x7f" in canonical:
            canonical = json.dumps(fields, separators=(",", ":")).encode()
        return canonical

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


# What the id key is derived for: the VTS token signs callbacks, this key only names them.
_ID_KEY_PURPOSE = b"masking-service: stored callback ids, v1"


def id_key(token: str) -> bytes:
    """The key stored callbacks' ids are made with, derived from the VTS auth token (an
    HMAC-SHA256 of a fixed purpose under the token, as HKDF's expand step does): the same
    in every process that has the token, and never written anywhere."""
    return hmac.new(token.encode(), _ID_KEY_PURPOSE, hashlib.sha256).digest()


class EventIds:
    """The ids stored callbacks are kept (and recognised as duplicates) under.

    An id is the HMAC-SHA256 of :attr:`Event.canonical` under :func:`id_key`: a plain
    digest would let whoever reads Redis, or a backup of it, try every phone number
    against the fields and recover the parties. During a VTS token rotation the id under
    the previous token is known too, so a callback stored before the rotation and its
    retry after it are one event.
    """

    def __init__(self, token: str, previous: str | None = None) -> None:
        self._keys = tuple(id_key(t) for t in (token, previous) if t)

    def of(self, event: Event) -> str:
        """The id ``event`` is stored under."""
        return self.all(event)[0]

    def all(self, event: Event) -> tuple[str, ...]:
        """The id under the current token, then the one under the previous token if any."""
        # hmac.digest: the one-shot form, in C, a fraction of hmac.new's cost.
        return tuple(hmac.digest(key, event.canonical, "sha256").hex()[:32] for key in self._keys)


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
