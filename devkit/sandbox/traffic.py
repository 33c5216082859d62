"""What the sandbox does to API traffic besides answering it: rate limit, faults, counts.

Rate limit: a sliding window of request arrival times for the account. Every
authenticated API request counts, refused ones included, so a client that keeps
hammering stays limited, as with VTS. Over ``limit`` arrivals within ``window`` seconds the
answer is 429 with ``Retry-After``: the whole seconds until a request would fit again.

Faults (``PUT /_sandbox/faults`` replaces them all; absent keys take their defaults):

- ``error_rate``: the fraction of requests answered ``error_status`` (default 503)
  before anything is done;
- ``rate_429``: the fraction answered 429 whatever the real rate;
- ``error_paths``: the actions (create, get, list, update, expire) that ``error_rate``
  and ``rate_429`` apply to; default all;
- ``retry_after``: the ``Retry-After`` of every 429 in whole seconds; ``null`` omits the
  header; ``"auto"`` (the default) computes it for the rate limit and says 1 for
  injected 429s;
- ``latency_ms``: added before every API request is handled;
- ``stall_after_create``: seconds a create waits, once its session exists, before it
  answers (the wait ends early if the client hangs up: VTS has acted either way);
  ``stall_rate``: the fraction of creates that stall (default 1);
- ``callback_drop_rate``: the fraction of session events never delivered (recorded as
  dropped);
- ``callback_reorder_rate``: the chance that each adjacent pair of a call's events is
  swapped in delivery order (a swapped pair is not swapped again);
- ``callback_duplicate_rate``: the fraction of delivered events sent a second time, after
  the rest of their call's events;
- ``callback_delay_ms``: a wait before each callback delivery;
- ``recording_404_seconds``: recording media answers 404 for this long after its
  recording was generated (when the call was placed), by the sandbox's clock, as VTS's
  media may lag its ``SessionRecordingCompleted`` event;
- ``recording_error_rate``: the fraction of media requests answered
  ``recording_error_status`` (500 to 599, default 503);
- ``recording_cut_rate``: the fraction of media downloads whose connection is closed
  after half the body, the headers having declared it whole;
- ``recording_wrong_length``: bytes added to the declared ``Content-Length`` of every
  media download (0, the default, is off). Positive: the whole body is sent, then the
  connection closed short of the declared length. Negative: only the declared bytes are
  sent, a complete-looking response holding a truncated file;
- ``recording_trickle_bytes_per_second``: media bodies are sent at about this rate
  (0, the default, is full speed);
- ``recording_redirect_to``: an absolute URL; authenticated media requests are answered
  302 to it (``null``, the default, is off).

Media faults apply to ``GET`` and ``HEAD`` alike, except those on the body; a request
meets at most one of 404, redirect, error, in that order.

- ``seed``: seeds the random draws (default 0), so a run of faults can be replayed. API
  faults, callback faults and media faults draw from separate generators, all seeded
  with it, so that one kind of traffic does not change which faults another suffers.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

ACTIONS = ("create", "get", "list", "update", "expire")

Fault = Literal["rate_429", "error"]
MediaFault = Literal["error", "cut"]
RetryAfter = int | Literal["auto"] | None
T = TypeVar("T")


class InvalidFaults(ValueError):
    """The fault settings are malformed; the message names the setting."""


def _number(value: object, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ValueError(f"must be a number from {low} to {high}")
    return float(value)


def _fraction(value: object) -> float:
    return _number(value, 0, 1)


def _duration(value: object) -> float:
    return _number(value, 0, 3600)


def _latency(value: object) -> float:
    return _number(value, 0, 60_000)


def _whole(value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"must be a whole number from {low} to {high}")
    return value


def _status(value: object) -> int:
    return _whole(value, 400, 599)


def _seed(value: object) -> int:
    return _whole(value, 0, 2**63)


def _server_error(value: object) -> int:
    return _whole(value, 500, 599)


def _delta(value: object) -> int:
    return _whole(value, -(10**9), 10**9)


def _rate(value: object) -> float:
    return _number(value, 0, 10**9)


def _redirect(value: object) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an absolute http or https URL, or null")
    return str(value)


def _actions(value: object) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not set(value) <= set(ACTIONS):
        raise ValueError(f"must be a list of actions among {', '.join(ACTIONS)}")
    return tuple(str(action) for action in value)


def _retry_after(value: object) -> RetryAfter:
    if value is None:
        return None
    if value == "auto":
        return "auto"
    return _whole(value, 0, 86400)


@dataclass(frozen=True)
class Faults:
    error_rate: float = 0.0
    error_status: int = 503
    error_paths: tuple[str, ...] = ACTIONS
    rate_429: float = 0.0
    retry_after: RetryAfter = "auto"
    latency_ms: float = 0.0
    stall_after_create: float = 0.0
    stall_rate: float = 1.0
    callback_duplicate_rate: float = 0.0
    callback_reorder_rate: float = 0.0
    callback_delay_ms: float = 0.0
    callback_drop_rate: float = 0.0
    recording_404_seconds: float = 0.0
    recording_error_rate: float = 0.0
    recording_error_status: int = 503
    recording_cut_rate: float = 0.0
    recording_wrong_length: int = 0
    recording_trickle_bytes_per_second: float = 0.0
    recording_redirect_to: str | None = None
    seed: int = 0

    @classmethod
    def parse(cls, body: object) -> Faults:
        """Faults from a JSON body; raises :class:`InvalidFaults`."""
        if not isinstance(body, dict):
            raise InvalidFaults("faults must be a JSON object")
        unknown = sorted(str(name) for name in body if name not in cls.__dataclass_fields__)
        if unknown:
            raise InvalidFaults(f"unknown settings: {', '.join(unknown)}")
        return cls(
            error_rate=_setting(body, "error_rate", _fraction),
            error_status=_setting(body, "error_status", _status),
            error_paths=_setting(body, "error_paths", _actions),
            rate_429=_setting(body, "rate_429", _fraction),
            retry_after=_setting(body, "retry_after", _retry_after),
            latency_ms=_setting(body, "latency_ms", _latency),
            stall_after_create=_setting(body, "stall_after_create", _duration),
            stall_rate=_setting(body, "stall_rate", _fraction),
            callback_duplicate_rate=_setting(body, "callback_duplicate_rate", _fraction),
            callback_reorder_rate=_setting(body, "callback_reorder_rate", _fraction),
            callback_delay_ms=_setting(body, "callback_delay_ms", _latency),
            callback_drop_rate=_setting(body, "callback_drop_rate", _fraction),
            recording_404_seconds=_setting(body, "recording_404_seconds", _duration),
            recording_error_rate=_setting(body, "recording_error_rate", _fraction),
            recording_error_status=_setting(body, "recording_error_status", _server_error),
            recording_cut_rate=_setting(body, "recording_cut_rate", _fraction),
            recording_wrong_length=_setting(body, "recording_wrong_length", _delta),
            recording_trickle_bytes_per_second=_setting(
                body, "recording_trickle_bytes_per_second", _rate
            ),
            recording_redirect_to=_setting(body, "recording_redirect_to", _redirect),
            seed=_setting(body, "seed", _seed),
        )

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _setting(body: Mapping[str, object], name: str, rule: Callable[[object], T]) -> T:
    try:
        return rule(body.get(name, getattr(_DEFAULTS, name)))
    except ValueError as exc:
        raise InvalidFaults(f"{name} {exc}") from None


_DEFAULTS = Faults()


@dataclass
class Stats:
    """Counts since the last reset; ``answered`` and ``injected`` are per action.

    ``faults`` totals ``injected`` over the actions, by kind (error, rate_429, stall).
    ``callbacks`` counts session events and their deliveries: events, attempts,
    delivered (any HTTP answer), failed (no answer after the last attempt), retried,
    dropped, duplicated and reordered (pairs); it counts recording events too, which
    ``recording_events`` counts alone. ``media`` counts recording media requests by
    outcome: served, head, not_found, redirected, error and cut (a cut one is served too).
    """

    received: Counter[str] = field(default_factory=Counter)
    answered: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    injected: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    rate_limited: int = 0
    max_in_window: int = 0
    sessions_created: int = 0
    callbacks: Counter[str] = field(default_factory=Counter)
    media: Counter[str] = field(default_factory=Counter)

    def as_json(self) -> dict[str, object]:
        return {
            "received": dict(self.received),
            "answered": {action: dict(codes) for action, codes in self.answered.items()},
            "injected": {action: dict(kinds) for action, kinds in self.injected.items()},
            "faults": dict(sum(self.injected.values(), Counter[str]())),  # totals per kind
            "rate_limited": self.rate_limited,
            "max_in_window": self.max_in_window,
            "sessions_created": self.sessions_created,
            "callbacks": dict(self.callbacks),
            "media": dict(self.media),
        }


class Traffic:
    """The rate limit, the fault settings with their random draws, and the counts."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float]) -> None:
        self._limit = limit
        self._window = window
        self._clock = clock
        self._arrivals: deque[float] = deque()
        self.reset()

    def reset(self) -> None:
        self._arrivals.clear()
        self.stats = Stats()
        self.configure(Faults())

    def configure(self, faults: Faults) -> None:
        self.faults = faults
        self._random = random.Random(faults.seed)
        self._callback_random = random.Random(faults.seed)
        self._media_random = random.Random(faults.seed)

    def admit(self) -> float | None:
        """Count an arrival: None if it is within the limit, else seconds until one would be."""
        now = self._clock()
        while self._arrivals and self._arrivals[0] <= now - self._window:
            self._arrivals.popleft()
        self._arrivals.append(now)
        self.stats.max_in_window = max(self.stats.max_in_window, len(self._arrivals))
        if len(self._arrivals) <= self._limit:
            return None
        self.stats.rate_limited += 1
        # A new arrival fits once all but limit - 1 of those now in the window have left it.
        return self._arrivals[-self._limit] + self._window - now

    def inject(self, action: str) -> Fault | None:
        """Draw the fault, if any, that this request of ``action`` suffers."""
        if action not in self.faults.error_paths:
            return None
        fault: Fault | None = None
        if self._chance(self.faults.rate_429):
            fault = "rate_429"
        elif self._chance(self.faults.error_rate):
            fault = "error"
        if fault:
            self.stats.injected[action][fault] += 1
        return fault

    def stall(self) -> float:
        """Seconds this create should hold its answer (0 for none)."""
        seconds = self.faults.stall_after_create
        if seconds <= 0 or not self._chance(self.faults.stall_rate):
            return 0.0
        self.stats.injected["create"]["stall"] += 1
        return seconds

    def retry_after(self, wait: float) -> dict[str, str]:
        """The ``Retry-After`` header for a 429 whose honest wait is ``wait`` seconds."""
        setting = self.faults.retry_after
        if setting is None:
            return {}
        seconds = max(1, math.ceil(wait)) if setting == "auto" else setting
        return {"Retry-After": str(seconds)}

    def _chance(self, rate: float) -> bool:
        return rate > 0 and self._random.random() < rate

    def plan_callbacks(self, count: int) -> CallbackPlan:
        """Which of ``count`` events (by index) to drop, and the order to send the rest in."""
        faults = self.faults
        dropped = [i for i in range(count) if self._callback_chance(faults.callback_drop_rate)]
        kept = [i for i in range(count) if i not in dropped]
        order = self._swap_pairs(kept, faults.callback_reorder_rate)
        again = [i for i in kept if self._callback_chance(faults.callback_duplicate_rate)]
        self.stats.callbacks.update(dropped=len(dropped), duplicated=len(again))
        sends = [(i, False) for i in order] + [(i, True) for i in again]
        return CallbackPlan(tuple(dropped), tuple(sends))

    def _swap_pairs(self, indices: list[int], rate: float) -> list[int]:
        order, i = list(indices), 0
        while i < len(order) - 1:
            if self._callback_chance(rate):
                order[i], order[i + 1] = order[i + 1], order[i]
                self.stats.callbacks["reordered"] += 1
                i += 1  # a swapped event stays swapped: it does not travel further
            i += 1
        return order

    def _callback_chance(self, rate: float) -> bool:
        return rate > 0 and self._callback_random.random() < rate

    def media_fault(self) -> MediaFault | None:
        """Draw the random fault, if any, that this media request suffers (and count it)."""
        fault: MediaFault | None = None
        if self._media_chance(self.faults.recording_error_rate):
            fault = "error"
        elif self._media_chance(self.faults.recording_cut_rate):
            fault = "cut"
        if fault:
            self.stats.media[fault] += 1
        return fault

    def _media_chance(self, rate: float) -> bool:
        return rate > 0 and self._media_random.random() < rate


@dataclass(frozen=True)
class CallbackPlan:
    """Event indices never to deliver, and (index, is_duplicate) pairs in delivery order."""

    dropped: tuple[int, ...]
    sends: tuple[tuple[int, bool], ...]
