"""Events: the raw VTS callbacks stored for replays and audits, the nonces that came with
them, the per-VTS-session sets of callbacks and of events in flight, the per-session
``applied`` markers, orphan events and the event totals.

Stored callbacks and nonces expire after ``WEBHOOK_RETENTION_SECONDS``; the ``webhooks``
and ``orphan-events`` indexes are trimmed in step; the ``applied`` set goes with its session.
A purged session's tombstone (``EventKeys.gone``) lasts as long as a stored callback.

Applying a stored callback to its session is here too (``StoredEvents.apply_event``): the
callback is what the script consumes, and its session, timeline and timers are what it
changes, in the one script call the callback path allows.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any

import msgspec
import redis
import redis.asyncio

from service.messages import Outgoing
from service.models import iso, now
from service.store import lua, scripts
from service.store.batching import GroupCommit
from service.store.codec import Applied, ApplyOutcome, decode_str
from service.store.names import PREFIX
from service.store.queue import QueueKeys
from service.store.schedule import ScheduleKeys
from service.store.sessions import (
    CHANNEL,
    SESSION_RETENTION_SECONDS,
    TIMELINE_LIMIT,
    SessionKeys,
)
from service.vts.callbacks import Event, at_rest

# How long raw callbacks (and the nonces that came with them) are kept: for replays,
# duplicate detection and audits.
WEBHOOK_RETENTION_SECONDS = 7 * 24 * 3600
# How long a VTS session's events in flight are kept after its last new event.
IN_FLIGHT_TTL = 3600


class IngestResult(StrEnum):
    """What storing a VTS callback did (``AsyncStoredEvents.ingest_webhook``)."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REPLAYED = "replayed"
    DROPPED = "dropped"


# The script's reply read by a lookup: the enum's own lookup by value costs a callback
# about a microsecond more.
_INGEST_RESULTS = {result.value.encode(): result for result in IngestResult}


class EventKeys:
    @staticmethod
    def in_flight(session_uuid: str) -> str:
        """The VTS session's events stored but not applied yet: a zset of event id ->
        received (ms), an hour's TTL renewed by each new event."""
        return f"{PREFIX}vts-session:{session_uuid}:events-in-flight"

    @staticmethod
    def callbacks(session_uuid: str) -> str:
        """The ids of the VTS session's stored callbacks (kept as long as they are), so
        that they go with the session when it is purged or erased."""
        return f"{PREFIX}vts-session:{session_uuid}:callbacks"

    @staticmethod
    def webhook(event_id: str) -> str:
        return f"{PREFIX}webhook:{event_id}"

    @staticmethod
    def webhooks() -> str:
        return f"{PREFIX}webhooks"

    @staticmethod
    def gone(session_uuid: str) -> str:
        """Set when a session is purged, for the webhook retention: its VTS session's late
        callbacks are dropped, not kept as orphans. Named by a digest of the VTS session
        id, so the purge leaves no identifier of the session behind."""
        digest = hashlib.sha256(session_uuid.encode()).hexdigest()[:32]
        return f"{PREFIX}vts-session-gone:{digest}"

    @staticmethod
    def nonce(nonce: str) -> str:
        return f"{PREFIX}nonce:{nonce}"

    @staticmethod
    def webhook_stats() -> str:
        return f"{PREFIX}stats:webhooks"

    @staticmethod
    def applied(session_id: str) -> str:
        return f"{PREFIX}session:{session_id}:applied"

    @staticmethod
    def orphan_events() -> str:
        return f"{PREFIX}orphan-events"

    @staticmethod
    def event_stats() -> str:
        return f"{PREFIX}stats:events"


def webhook_totals(client: redis.Redis) -> dict[str, int]:
    """Callbacks received, by outcome (a hash bounded by the outcomes)."""
    return _totals(client, EventKeys.webhook_stats())


def event_totals(client: redis.Redis) -> dict[str, int]:
    """Events processed, by outcome (a hash bounded by the outcomes)."""
    return _totals(client, EventKeys.event_stats())


def _totals(client: redis.Redis, key: str) -> dict[str, int]:
    raw: dict[bytes | str, bytes | str] = client.hgetall(key)
    return {decode_str(field): int(value) for field, value in raw.items()}


def decode_webhook(raw: Mapping[Any, Any]) -> tuple[str, dict[str, str], int] | None:
    if not raw:
        return None
    fields = {decode_str(k): decode_str(v) for k, v in raw.items()}
    return fields["kind"], json.loads(fields["params"]), int(fields["received_ms"])


class StoredEvents:
    """The workers' side of stored callbacks: applying them, and events in flight, orphans
    and ``applied`` markers.

    ``retention`` (seconds) is how long an ended session is kept: an event that ends a
    session schedules its purge that much later.
    """

    def __init__(self, client: redis.Redis, *, retention: int = SESSION_RETENTION_SECONDS) -> None:
        self.client = client
        self.retention = retention
        self._apply = client.register_script(scripts.APPLY_EVENT)
        self._apply_constants = {
            "session_key": SessionKeys.session(_ID),
            "applied_key": EventKeys.applied(_ID),
            "timeline_key": SessionKeys.timeline(_ID),
            "channel": CHANNEL,
            "status_prefix": SessionKeys.index() + ":status:",
            "timeline_limit": TIMELINE_LIMIT,
        }

    def apply_event(
        self,
        event_id: str,
        session_uuid: str,
        *,
        clock: datetime,
        reconcile_after: Mapping[str, int],
        marker: str | None = None,
        virtual_number: str | None = None,
    ) -> Applied:
        """Apply the stored callback ``event_id`` of VTS session ``session_uuid`` exactly
        once, in one round trip (see ``apply_event.lua``): a redelivered event is a
        ``duplicate`` and changes nothing. After an event whose role ``reconcile_after``
        names, schedules the session's reconciliation that many ms after ``clock``.
        ``marker`` and ``virtual_number`` answer a ``needs`` outcome."""
        moment = now()
        arguments = self._apply_constants | {
            "event_id": event_id,
            "now": iso(moment),
            "clock_ms": str(int(clock.timestamp() * 1000)),
            "purge_at": str(int((moment.timestamp() + self.retention) * 1000)),
            "reconcile_after": reconcile_after,
        }
        if marker is not None:
            arguments["marker"] = marker
        if virtual_number is not None:
            arguments["virtual_number"] = virtual_number
        reply = self._apply(
            keys=[
                EventKeys.webhook(event_id),
                SessionKeys.vts_session(session_uuid),
                EventKeys.in_flight(session_uuid),
                EventKeys.event_stats(),
                ScheduleKeys.schedule(),
            ],
            args=[msgspec.json.encode(arguments)],
        )
        outcome, detail, session_id, name, sequence, before, after, interactions = (
            decode_str(item) if isinstance(item, bytes) else item for item in reply
        )
        return Applied(
            ApplyOutcome(outcome),
            detail,
            session_id,
            name,
            int(sequence) if sequence else None,
            before,
            after,
            int(interactions),
        )

    def webhook(self, event_id: str) -> tuple[str, dict[str, str], int] | None:
        """A stored callback: (kind, params, received at in ms), or None once expired."""
        return decode_webhook(self.client.hgetall(EventKeys.webhook(event_id)))

    def set_aside(self, event_id: str, session_uuid: str, stats_field: str) -> None:
        """Take an event out of its VTS session's in-flight set without applying it (it is
        invalid), counting it under ``stats_field``."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.zrem(EventKeys.in_flight(session_uuid), event_id)
            pipe.hincrby(EventKeys.event_stats(), stats_field, 1)
            pipe.execute()

    def drop_callback(self, event_id: str, session_uuid: str) -> None:
        """Delete a stored callback of an erased or purged session without applying it,
        counting it as ``dropped``: nothing of it outlives the session's data."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(EventKeys.webhook(event_id))
            pipe.zrem(EventKeys.webhooks(), event_id)
            pipe.zrem(EventKeys.in_flight(session_uuid), event_id)
            pipe.srem(EventKeys.callbacks(session_uuid), event_id)
            pipe.hincrby(EventKeys.event_stats(), "dropped", 1)
            pipe.execute()

    def refuses_callbacks(self, session_uuid: str) -> bool:
        """Whether the VTS session's session was erased or purged: its callbacks are
        dropped."""
        if self.client.exists(EventKeys.gone(session_uuid)):
            return True
        owner = self.client.get(SessionKeys.vts_session(session_uuid))
        return owner is not None and bool(
            self.client.hexists(SessionKeys.session(decode_str(owner)), "erased_at")
        )

    def keep_orphan(self, event_id: str, received_ms: int, session_uuid: str = "") -> None:
        """Set aside an event for a session we never created (kept, counted, not lost)."""
        oldest = received_ms - WEBHOOK_RETENTION_SECONDS * 1000
        with self.client.pipeline(transaction=True) as pipe:
            pipe.zadd(EventKeys.orphan_events(), {event_id: received_ms})
            # The events themselves expire after the webhook retention: so do their ids.
            pipe.zremrangebyscore(EventKeys.orphan_events(), "-inf", f"({oldest}")
            if session_uuid:
                pipe.zrem(EventKeys.in_flight(session_uuid), event_id)
            pipe.hincrby(EventKeys.event_stats(), "orphaned", 1)
            pipe.execute()

    def events_in_flight(self, session_uuid: str, since: datetime) -> int:
        """How many of the VTS session's callbacks received since ``since`` are stored but
        not applied yet (older ones are stuck or lost: they no longer hold anything up)."""
        count = self.client.zcount(EventKeys.in_flight(session_uuid), _millis(since), "+inf")
        return int(count)

    def webhooks_between(self, since_ms: int, until_ms: int | str) -> list[str]:
        """Ids of the stored callbacks received in [since, until] (epoch ms, or "+inf")."""
        found: list[bytes] = self.client.zrangebyscore(  # type: ignore[assignment]
            EventKeys.webhooks(), since_ms, until_ms
        )
        return [decode_str(i) for i in found]

    def mark_applied(self, session_id: str, marker: str) -> bool:
        """Add ``marker`` to the session's ``applied`` set (which goes with the session);
        False if it was already there."""
        return bool(self.client.sadd(EventKeys.applied(session_id), marker))


class AsyncStoredEvents:
    """The web's side of stored callbacks: a callback is stored and its processing queued
    in one script, through ``group``, the group commit it shares with the web's other
    writes (by default one of its own)."""

    def __init__(self, client: redis.asyncio.Redis, *, group: GroupCommit | None = None) -> None:
        self._group = group if group is not None else GroupCommit(client)
        self._ingest = client.register_script(
            f"local IN_FLIGHT_TTL = {IN_FLIGHT_TTL}\n" + lua.source("ingest.lua")
        )

    async def ingest_webhook(
        self,
        event: Event,
        ids: Sequence[str],
        message: Outgoing,
        *,
        nonce: str | None,
        received_ms: int,
    ) -> IngestResult:
        """Make a VTS callback durable and queue its processing, in one shared round trip
        (see ``ingest.lua``). ``ids`` are the event's ids (``EventIds.all``): it is stored
        under the first, and is a duplicate if stored under any.

        Returns ``ACCEPTED``, ``DUPLICATE`` (this event is already stored: nothing done),
        ``REPLAYED`` (the nonce came with another event before: nothing done) or
        ``DROPPED`` (its session was erased or purged: nothing stored).
        """
        event_id, previous = ids[0], (ids[1] if len(ids) > 1 else "")
        arguments = {
            "event_id": event_id,
            "previous_id": previous,
            "retention": WEBHOOK_RETENTION_SECONDS,
            "received_ms": received_ms,
            "message_id": message.redis_message_id,
            "payload": message.payload.decode(),
            "session_prefix": SessionKeys.session(""),
            "fields": {
                "kind": event.kind,
                "params": msgspec.json.encode(at_rest(event.params)).decode(),
                "received_ms": str(received_ms),
            },
        }
        result = await self._group.call(
            self._ingest,
            keys=[
                EventKeys.nonce(nonce) if nonce else "",
                EventKeys.webhook(event_id),
                QueueKeys.queue(message.queue_name),
                QueueKeys.queue_messages(message.queue_name),
                EventKeys.webhooks(),
                EventKeys.webhook_stats(),
                EventKeys.in_flight(event.session_uuid) if event.kind == "session" else "",
                EventKeys.callbacks(event.session_uuid),
                EventKeys.webhook(previous) if previous else "",
                SessionKeys.vts_session(event.session_uuid),
                EventKeys.gone(event.session_uuid),
            ],
            args=[msgspec.json.encode(arguments)],
        )
        return _INGEST_RESULTS[result if isinstance(result, bytes) else str(result).encode()]


def _millis(moment: datetime | None) -> str:
    return str(int(moment.timestamp() * 1000)) if moment else ""


# Where the apply script puts a session's id in the names of its keys.
_ID = "{id}"
