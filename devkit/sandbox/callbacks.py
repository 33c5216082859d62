"""How the sandbox delivers the callbacks VTS sends: signed, one at a time, retried once.

Two channels share this machinery: ``session`` events (to a session's ``callback_url``,
see :mod:`devkit.sandbox.calls`) and ``recording`` events (to its
``recording_callback_url``, see :mod:`devkit.sandbox.recordings`).

A batch (one call's events on one channel) goes to a :class:`Target` with its method
(``POST`` form-encoded; ``GET`` in the query string, merged with the URL's own query),
signed with V3 against exactly the target URL (fresh nonce per request, duplicates and
retries included). Batches of one *lane* (a session's channel) queue behind each other;
the two channels of a session are separate lanes, as VTS sends them from separate
systems, so a session's recording events may overtake its session events. A connect
error, connect timeout or read timeout is retried once at once; any HTTP answer, 5xx
included, is final. Faults (drop, reorder, duplicate, delay) are drawn by
:meth:`~devkit.sandbox.traffic.Traffic.plan_callbacks` when the batch is dispatched,
for both channels alike.

Every attempt is kept as a :class:`Delivery` (dropped events with attempt 0), for
``GET /_sandbox/deliveries``; :meth:`Courier.drain` waits until nothing is pending.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx2

from devkit.sandbox.sessions import Session
from devkit.sandbox.traffic import Traffic
from service.vts.signatures import NONCE_HEADERS, SIGNATURE_HEADERS, new_nonce, v3_signature

Event = dict[str, str]
Channel = Literal["session", "recording"]

_RETRIED = (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.ReadTimeout)
_OPTION_PREFIX: dict[Channel, str] = {"session": "callback", "recording": "recording_callback"}


def event_time(epoch: float) -> str:
    """An event's timestamp: UTC, ``YYYY-MM-DD HH:MM:SS``."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")


def party_fields(session: Session) -> Event:
    """The fields every event of ``session`` carries; numbers without their ``+``."""
    return {
        "SessionUUID": session.session_uuid,
        "FirstParty": session.first_party.removeprefix("+"),
        "SecondParty": session.second_party.removeprefix("+"),
        "VirtualNumber": session.virtual_number.removeprefix("+"),
    }


@dataclass(frozen=True)
class Target:
    """Where and how a channel's callbacks go."""

    url: str
    method: str

    @classmethod
    def of(cls, session: Session, channel: Channel) -> Target | None:
        """The session's target for ``channel``; None when it has no URL for it."""
        prefix = _OPTION_PREFIX[channel]
        url, method = session.options[f"{prefix}_url"], session.options[f"{prefix}_method"]
        return cls(url, str(method)) if isinstance(url, str) else None


@dataclass(frozen=True)
class Delivery:
    """One delivery attempt (``attempt`` 0: the event was dropped, never sent)."""

    call_id: str
    channel: Channel
    session_uuid: str
    sequence_number: int
    event_name: str
    duplicate: bool
    attempt: int
    status_code: int | None
    error: str | None
    dropped: bool


@dataclass(frozen=True)
class _Parcel:
    """One event of a batch to send; ``duplicate`` when it is the fault's second copy."""

    call_id: str
    channel: Channel
    event: Event
    duplicate: bool


def _with_query(url: str, params: Mapping[str, str]) -> str:
    """``url`` with ``params`` merged into its query, as V3 merges them for GET."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit(parts._replace(query=urlencode({**params, **query})))


class Courier:
    """Delivers callbacks as VTS does: signed, one at a time per lane, retried once."""

    def __init__(self, traffic: Traffic, auth_token: str, timeout: float) -> None:
        self._traffic = traffic
        self._token = auth_token
        self._timeout = timeout
        self._client: httpx2.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._remaining: dict[str, int] = {}
        self.deliveries: list[Delivery] = []

    @property
    def pending(self) -> int:
        """Events queued or in flight."""
        return sum(self._remaining.values())

    def dispatch(
        self, target: Target | None, channel: Channel, call_id: str, events: Sequence[Event]
    ) -> None:
        """Plan the faults and start delivering ``events`` (one session's) in the background."""
        if target is None or not events:
            return  # VTS has nowhere to send them
        plan = self._traffic.plan_callbacks(len(events))
        for index in plan.dropped:
            self._record(_Parcel(call_id, channel, events[index], False), attempt=0)
        parcels = [_Parcel(call_id, channel, events[i], again) for i, again in plan.sends]
        if parcels:
            batch = str(uuid.uuid4())
            self._remaining[batch] = len(parcels)
            lane = f"{channel} {events[0]['SessionUUID']}"
            task = asyncio.create_task(self._deliver_batch(target, lane, batch, parcels))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver_batch(
        self, target: Target, lane: str, batch: str, parcels: list[_Parcel]
    ) -> None:
        async with self._locks[lane]:
            for parcel in parcels:
                await self._deliver(target, parcel)
                if batch in self._remaining:  # unless a reset forgot the batch
                    self._remaining[batch] -= 1
        self._remaining.pop(batch, None)

    async def _deliver(self, target: Target, parcel: _Parcel) -> None:
        if delay := self._traffic.faults.callback_delay_ms:
            await asyncio.sleep(delay / 1000)
        for attempt in (1, 2):
            if not await self._attempt(target, parcel, attempt):
                return

    async def _attempt(self, target: Target, parcel: _Parcel, attempt: int) -> bool:
        """Send once and record the outcome; whether VTS would try again."""
        counts = self._traffic.stats.callbacks
        counts["attempts"] += 1
        try:
            response = await self._send(target, parcel.event)
        except httpx2.TransportError as exc:
            self._record(parcel, attempt, error=type(exc).__name__)
            again = attempt == 1 and isinstance(exc, _RETRIED)
            counts["retried" if again else "failed"] += 1
            return again
        self._record(parcel, attempt, status_code=response.status_code)
        counts["delivered"] += 1
        return False

    async def _send(self, target: Target, event: Event) -> httpx2.Response:
        nonce = new_nonce()
        signature = v3_signature(target.url, event, nonce, self._token, target.method)
        headers = {SIGNATURE_HEADERS[0]: signature, NONCE_HEADERS[0]: nonce}
        if self._client is None:
            self._client = httpx2.AsyncClient(timeout=self._timeout)
        if target.method == "GET":
            return await self._client.get(_with_query(target.url, event), headers=headers)
        return await self._client.post(target.url, data=event, headers=headers)

    def _record(
        self,
        parcel: _Parcel,
        attempt: int,
        status_code: int | None = None,
        error: str | None = None,
    ) -> None:
        event = parcel.event
        delivery = Delivery(
            call_id=parcel.call_id,
            channel=parcel.channel,
            session_uuid=event["SessionUUID"],
            sequence_number=int(event["SequenceNumber"]),
            event_name=event["EventName"],
            duplicate=parcel.duplicate,
            attempt=attempt,
            status_code=status_code,
            error=error,
            dropped=attempt == 0,
        )
        self.deliveries.append(delivery)

    async def drain(self, timeout: float) -> int:
        """Wait until nothing is pending, or ``timeout`` seconds; how many still are."""
        with suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self._tasks:
                    await asyncio.wait(set(self._tasks))
        return self.pending

    async def clear(self) -> None:
        """Stop every delivery and forget them all."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._remaining.clear()
        self._locks.clear()
        self.deliveries.clear()

    async def close(self) -> None:
        await self.clear()
        if self._client is not None:
            await self._client.aclose()
            self._client = None
