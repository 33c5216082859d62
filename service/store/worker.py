"""The workers' view of the store: the concept modules composed, and what crosses them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

import redis

from service.models import Status, iso, now
from service.store import scripts
from service.store.codec import Applied, EventChange, decode_str
from service.store.deadletters import DeadLetters
from service.store.events import EventKeys, StoredEvents
from service.store.queue import QueueAccess
from service.store.recordings import RecordingKeys
from service.store.schedule import Schedule, ScheduleKeys, timer_entries
from service.store.sessions import (
    CHANNEL,
    SESSION_RETENTION_SECONDS,
    TIMELINE_LIMIT,
    SessionKeys,
    Sessions,
)


class Store(Sessions, StoredEvents, Schedule, QueueAccess, DeadLetters):
    """The workers' view of the store: sessions, stored events, the schedule, queue access
    and dead letters from their modules; here what crosses them (applying an event,
    purging a session).

    ``retention`` (seconds) is how long an ended session is kept: the write that ends a
    session schedules its purge that much later.
    """

    def __init__(self, client: redis.Redis, *, retention: int = SESSION_RETENTION_SECONDS) -> None:
        self.client = client
        self.retention = retention
        self._apply = client.register_script(scripts.APPLY_EVENT)
        self._init_sessions()
        self._init_schedule()
        self._init_dead_letters()

    def apply_event(self, session_id: str, change: EventChange) -> Applied:
        """Apply one event's effect exactly once (see ``apply_event.lua``); a redelivered
        event is a ``duplicate`` and changes nothing. Schedules the session's
        reconciliation at ``change.reconcile_at`` when given."""
        arguments = {
            "event_id": change.event_id,
            "marker": change.marker,
            "role": change.role,
            "party": change.party,
            "sequence": "" if change.sequence is None else str(change.sequence),
            "billed": str(change.billed),
            "amount_nanos": str(change.amount_nanos),
            "at": change.at,
            "entry": change.entry,
            "virtual_number": change.virtual_number or "",
            "updated_at": iso(now()) or "",
            "reconcile_at": _millis(change.reconcile_at),
            "session_id": session_id,
            "channel": CHANNEL,
            "status_prefix": SessionKeys.index() + ":status:",
            "timeline_limit": TIMELINE_LIMIT,
            "purge_at": str(self._purge_due()),
        }
        outcome, before, after, interactions, news = self._apply(
            keys=[
                SessionKeys.session(session_id),
                EventKeys.applied(session_id),
                SessionKeys.timeline(session_id),
                EventKeys.event_stats(),
                ScheduleKeys.schedule(),
                EventKeys.in_flight(change.session_uuid),
            ],
            args=[json.dumps(arguments, separators=(",", ":"))],
        )
        return Applied(
            decode_str(outcome),
            decode_str(before),
            decode_str(after),
            int(interactions),
            bool(news),
        )

    def purge_session(self, session_id: str, recording_ids: Sequence[str]) -> None:
        """Delete the session and everything hanging off it: timeline, applied events,
        recordings' records, index entries, timers, its VTS session's claim and stored
        callbacks, its idempotency record. Idempotent. The recordings' files are the
        caller's to delete first."""
        key = SessionKeys.session(session_id)
        member, uuid, idempotency = (
            decode_str(v) if v else None
            for v in self.client.hmget(key, ["index_member", "vts_session_uuid", "idempotency_key"])
        )
        with self.client.pipeline(transaction=False) as pipe:
            pipe.get(SessionKeys.vts_session(uuid or ""))
            pipe.smembers(EventKeys.callbacks(uuid or ""))
            pipe.hget(idempotency or SessionKeys.idempotency("", ""), "session_id")
            claim, callbacks, idempotent_for = pipe.execute()
        doomed = [key, SessionKeys.timeline(session_id), EventKeys.applied(session_id)]
        doomed += [
            RecordingKeys.session_recordings(session_id),
            SessionKeys.session_lock(session_id),
        ]
        doomed.append(SessionKeys.pending_update(session_id))
        doomed += [RecordingKeys.recording(rec_id) for rec_id in recording_ids]
        if uuid:
            doomed += [EventKeys.in_flight(uuid), EventKeys.callbacks(uuid)]
            doomed += [EventKeys.webhook(decode_str(event_id)) for event_id in callbacks]
            if claim is not None and decode_str(claim) == session_id:
                doomed.append(SessionKeys.vts_session(uuid))
        if idempotency and idempotent_for is not None and decode_str(idempotent_for) == session_id:
            doomed.append(idempotency)
        with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(*doomed)
            if member:
                for index in (
                    SessionKeys.index(),
                    *(SessionKeys.index(status) for status in Status),
                ):
                    pipe.zrem(index, member)
            if callbacks:
                pipe.zrem(EventKeys.webhooks(), *callbacks)
            pipe.zrem(ScheduleKeys.schedule(), *timer_entries(session_id))
            pipe.execute()


def _millis(moment: datetime | None) -> str:
    return str(int(moment.timestamp() * 1000)) if moment else ""
