"""The sandbox's masking sessions: VTS's field rules, the virtual-number pool, lookups.

VTS documents the create fields but not their bounds; the sandbox enforces these:

- ``session_expiry``: 60 to 604800 s (a minute to seven days), default 3600
- ``call_time_limit``: 60 to 14400 s (a minute to four hours), default 3600
- ``ring_timeout``: 5 to 300 s, default 120

Integers are JSON integers or strings of digits (``"3600"``); booleans are JSON booleans
or ``"true"``/``"false"``; methods are ``GET``/``POST`` and formats ``mp3``/``wav``, in that
case. URLs are absolute ``http``/``https``. ``null``, floats and unknown fields are
rejected. Numbers are accepted with or without their leading ``+``. Every problem in a
body is reported at once, joined by ``"; "``; messages name fields, never values, so no
phone number ever appears in one.

A virtual number is held by its session until the session expires (by ``DELETE`` or by
time). When every number in the pool is held, create answers 400 ``no virtual number
available``, as VTS does when an account has no number left to mask with.

List queries: ``status`` is ``active`` (includes ``in-progress``), ``expired`` or ``all``
(the default, as Plivo lists every session unless asked); ``limit`` 1 to 20 (default
20); ``offset`` from 0; ``created_time__gte``/``__lte`` as ``YYYY-MM-DD HH:MM[:SS]`` in
UTC, inclusive. Unknown query parameters are rejected, so a misspelt filter fails loudly
instead of silently widening the search.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from urllib.parse import urlsplit

from service.phones import InvalidNumber, normalise

Option = bool | int | str | None
Validator = Callable[[object], Option]

_SHOWABLE_NAME = re.compile(r"[a-z_]{1,64}")  # no digits: cannot be a phone number
_DIGITS = re.compile(r"[0-9]{1,9}")  # short enough that int() never balks
_TIME_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M")
_STATUSES = ("active", "expired", "all")
_QUERY_NAMES = {"first_party", "second_party", "virtual_number", "status", "limit", "offset"}
_QUERY_NAMES |= {"created_time__gte", "created_time__lte"}
PAGE_LIMIT = 20
_MISSING = object()  # stands in for a required field the body lacks


class Refused(Exception):
    """VTS refuses the request: ``status`` and a message that is safe to show."""

    status = 400


class InvalidRequest(Refused):
    """The request breaks VTS's rules. The message names fields and never holds a value."""


class NoNumberAvailable(Refused):
    """Every virtual number in the pool is held by an active session."""

    def __init__(self) -> None:
        super().__init__("no virtual number available")


class SessionExpired(Refused):
    """The session has expired and can no longer be changed."""

    def __init__(self) -> None:
        super().__init__("session is expired")


class UnknownSession(Refused):
    """No session has this uuid."""

    status = 404

    def __init__(self) -> None:
        super().__init__("session not found")


def _boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return value == "true"
    raise ValueError("must be true or false")


def _seconds(low: int, high: int) -> Validator:
    def check(value: object) -> int:
        if isinstance(value, str) and _DIGITS.fullmatch(value):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"must be a whole number of seconds from {low} to {high}")
        return value

    return check


def _choice(*allowed: str) -> Validator:
    def check(value: object) -> str:
        if isinstance(value, str) and value in allowed:
            return value
        raise ValueError(f"must be one of {', '.join(allowed)}")

    return check


def _url(value: object) -> str:
    try:
        parts = urlsplit(value) if isinstance(value, str) else None
    except ValueError:  # e.g. an unclosed IPv6 bracket
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http or https URL")
    return str(value)


def _number(value: object) -> str:
    if value is _MISSING:
        raise ValueError("is required")
    if isinstance(value, str):
        # InvalidNumber's own message quotes an example number: never pass it on.
        with suppress(InvalidNumber):
            return normalise(value)
    raise ValueError("must be a valid phone number with its country code")


OPTIONS: dict[str, tuple[Validator, Option]] = {
    "record": (_boolean, False),
    "record_file_format": (_choice("mp3", "wav"), "mp3"),
    "recording_callback_url": (_url, None),
    "recording_callback_method": (_choice("GET", "POST"), "POST"),
    "session_expiry": (_seconds(60, 7 * 86400), 3600),
    "call_time_limit": (_seconds(60, 14400), 3600),
    "initiate_call_to_first_party": (_boolean, False),
    "callback_url": (_url, None),
    "callback_method": (_choice("GET", "POST"), "POST"),
    "ring_timeout": (_seconds(5, 300), 120),
    "first_party_play_url": (_url, None),
    "second_party_play_url": (_url, None),
}
_OPTION_RULES = {name: rule for name, (rule, _) in OPTIONS.items()}
_PARTIES: dict[str, Validator] = {"first_party": _number, "second_party": _number}
_FIXED = ("first_party", "second_party", "initiate_call_to_first_party")


def _check(body: Mapping[str, object], rules: Mapping[str, Validator]) -> dict[str, Option]:
    """Validate every field of ``body``; raise one :class:`InvalidRequest` listing all problems."""
    values: dict[str, Option] = {}
    problems: list[str] = []
    for name, value in body.items():
        try:
            values[name] = rules.get(name, _unknown)(value)
        except ValueError as exc:
            problems.append(f"{_shown(name)} {exc}")
    if problems:
        raise InvalidRequest("; ".join(problems))
    return values


def _unknown(value: object) -> Option:
    raise ValueError("is not a known field")


def _shown(name: str) -> str:
    return name if _SHOWABLE_NAME.fullmatch(name) else "a field whose name is not shown"


@dataclass(frozen=True)
class NewSession:
    first_party: str
    second_party: str
    options: dict[str, Option]


def parse_create(body: Mapping[str, object]) -> NewSession:
    """The validated create request, defaults filled in; raises :class:`InvalidRequest`."""
    values = _check(dict.fromkeys(_PARTIES, _MISSING) | dict(body), _PARTIES | _OPTION_RULES)
    first, second = str(values.pop("first_party")), str(values.pop("second_party"))
    if first == second:
        raise InvalidRequest("first_party and second_party must be different numbers")
    defaults = {name: default for name, (_, default) in OPTIONS.items()}
    return NewSession(first, second, defaults | values)


def parse_update(body: Mapping[str, object]) -> dict[str, Option]:
    """The validated changes of an update; raises :class:`InvalidRequest`."""
    fixed = [f"{name} cannot be changed after create" for name in _FIXED if name in body]
    if fixed:
        raise InvalidRequest("; ".join(fixed))
    return _check(body, _OPTION_RULES)


@dataclass
class Session:
    """One masking session. Times are epoch seconds; ``modified_time`` is None until updated."""

    session_uuid: str
    virtual_number: str
    first_party: str
    second_party: str
    options: dict[str, Option]
    created_time: float
    expiry_time: float
    modified_time: float | None = None
    last_interaction_time: float | None = None
    amount: Decimal = Decimal(0)
    total_call_count: int = 0
    total_call_amount: Decimal = Decimal(0)
    total_call_billed_duration: int = 0
    interaction: list[dict[str, object]] | None = None

    def status(self, now: float) -> str:
        return "expired" if now >= self.expiry_time else "active"

    def duration(self, now: float) -> int:
        """Seconds the session has lived, up to its expiry."""
        return max(0, int(min(now, self.expiry_time) - self.created_time))


def _expiry(options: Mapping[str, Option]) -> int:
    seconds = options["session_expiry"]
    assert isinstance(seconds, int)
    return seconds


@dataclass(frozen=True)
class Query:
    """A validated list request; numbers are E.164, times epoch seconds."""

    first_party: str | None = None
    second_party: str | None = None
    virtual_number: str | None = None
    status: str = "all"
    created_time__gte: float | None = None
    created_time__lte: float | None = None
    limit: int = PAGE_LIMIT
    offset: int = 0

    def matches(self, session: Session, now: float) -> bool:
        pairs = [
            (self.first_party, session.first_party),
            (self.second_party, session.second_party),
            (self.virtual_number, session.virtual_number),
        ]
        if any(wanted not in (None, actual) for wanted, actual in pairs):
            return False
        if self.status != "all" and session.status(now) != self.status:
            return False
        low, high = self.created_time__gte, self.created_time__lte
        return (low is None or session.created_time >= low) and (
            high is None or session.created_time <= high
        )


def _limit(text: str) -> int:
    if not (_DIGITS.fullmatch(text) and 1 <= int(text) <= PAGE_LIMIT):
        raise InvalidRequest(f"limit must be a whole number from 1 to {PAGE_LIMIT}")
    return int(text)


def _offset(text: str) -> int:
    if not _DIGITS.fullmatch(text):
        raise InvalidRequest("offset must be a whole number, 0 or more")
    return int(text)


def _number_filter(params: Mapping[str, str], name: str) -> str | None:
    if name not in params:
        return None
    try:
        return _number(params[name])
    except ValueError as exc:
        raise InvalidRequest(f"{name} {exc}") from None


def _time_filter(params: Mapping[str, str], name: str) -> float | None:
    if name not in params:
        return None
    for layout in _TIME_FORMATS:
        with suppress(ValueError):
            return datetime.strptime(params[name], layout).replace(tzinfo=UTC).timestamp()
    raise InvalidRequest(f"{name} must be YYYY-MM-DD HH:MM or YYYY-MM-DD HH:MM:SS (UTC)")


def parse_query(params: Mapping[str, str]) -> Query:
    """The validated list query; raises :class:`InvalidRequest`."""
    _check(dict.fromkeys(sorted(set(params) - _QUERY_NAMES)), {})  # rejects unknown names
    status = params.get("status", "all")
    if status not in _STATUSES:
        raise InvalidRequest(f"status must be one of {', '.join(_STATUSES)}")
    return Query(
        first_party=_number_filter(params, "first_party"),
        second_party=_number_filter(params, "second_party"),
        virtual_number=_number_filter(params, "virtual_number"),
        status=status,
        created_time__gte=_time_filter(params, "created_time__gte"),
        created_time__lte=_time_filter(params, "created_time__lte"),
        limit=_limit(params.get("limit", str(PAGE_LIMIT))),
        offset=_offset(params.get("offset", "0")),
    )


@dataclass
class SessionBook:
    """Every session of the sandbox's one account, and who holds which virtual number."""

    pool: Sequence[str]
    clock: Callable[[], float]
    sessions: dict[str, Session] = field(default_factory=dict)
    holders: dict[str, Session] = field(default_factory=dict)

    def create(self, new: NewSession) -> Session:
        """Open a session on a free virtual number; raises :class:`NoNumberAvailable`."""
        now = self.clock()
        number = self._free_number(now)
        session = Session(
            session_uuid=str(uuid.uuid4()),
            virtual_number=number,
            first_party=new.first_party,
            second_party=new.second_party,
            options=dict(new.options),
            created_time=now,
            expiry_time=now + _expiry(new.options),
        )
        self.sessions[session.session_uuid] = session
        self.holders[number] = session
        return session

    def get(self, session_uuid: str) -> Session:
        """The session; raises :class:`UnknownSession`."""
        try:
            return self.sessions[session_uuid]
        except KeyError:
            raise UnknownSession from None

    def _free_number(self, now: float) -> str:
        for number in self.pool:
            holder = self.holders.get(number)
            if holder is None or holder.status(now) == "expired":
                return number
        raise NoNumberAvailable

    def update(self, session: Session, changes: Mapping[str, Option]) -> None:
        """Apply validated changes; a new ``session_expiry`` counts from now."""
        now = self.clock()
        if session.status(now) == "expired":
            raise SessionExpired
        session.options.update(changes)
        if "session_expiry" in changes:
            session.expiry_time = now + _expiry(changes)
        session.modified_time = now

    def expire(self, session: Session) -> None:
        """End the session now, freeing its number. Expiring it again changes nothing."""
        now = self.clock()
        if session.status(now) != "expired":
            session.expiry_time = now
            session.modified_time = now

    def search(self, query: Query) -> tuple[list[Session], int]:
        """One page of the matching sessions, newest first, and how many match in all."""
        now = self.clock()
        found = [s for s in reversed(self.sessions.values()) if query.matches(s, now)]
        found.sort(key=lambda s: s.created_time, reverse=True)  # stable: ties stay newest first
        return found[query.offset : query.offset + query.limit], len(found)

    def clear(self) -> None:
        self.sessions.clear()
        self.holders.clear()
