"""The workers' view of the store: the concept modules composed, and what crosses them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

import msgspec
import redis

from service.models import Status, iso, now
from service.redis_clients import Durability, wait_for_replicas
from service.store import scripts
from service.store.codec import Applied, ApplyOutcome, decode_str
from service.store.deadletters import DeadLetters
from service.store.events import WEBHOOK_RETENTION_SECONDS, EventKeys, StoredEvents
from service.store.notifications import NotificationStore
from service.store.queue import QueueAccess
from service.store.recordings import RecordingKeys
from service.store.schedule import Schedule, ScheduleKeys, timer_entries
from service.store.sessions import (
    CHANNEL,
    SESSION_RETENTION_SECONDS,
    TIMELINE_LIMIT,
    SessionKeys,
    Sessions,
    member_session_id,
)


class Store(Sessions, StoredEvents, Schedule, QueueAccess, DeadLetters):
    """The workers' view of the store: sessions, stored events, the schedule, queue access
    and dead letters from their modules; here what crosses them (applying an event,
    purging a session).

    ``retention`` (seconds) is how long an ended session is kept: the write that ends a
    session schedules its purge that much later.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        retention: int = SESSION_RETENTION_SECONDS,
        durability: Durability = Durability(),  # noqa: B008  (frozen: shared safely)
    ) -> None:
        self.client = client
        self.retention = retention
        self.notifications = NotificationStore(client)
        self.durability = durability
        self._apply = client.register_script(scripts.APPLY_EVENT)
        self._apply_constants = {
            "session_key": SessionKeys.session(_ID),
            "applied_key": EventKeys.applied(_ID),
            "timeline_key": SessionKeys.timeline(_ID),
            "channel": CHANNEL,
            "status_prefix": SessionKeys.index() + ":status:",
            "timeline_limit": TIMELINE_LIMIT,
        }
        self._init_sessions()
        self._init_schedule()
        self._init_dead_letters()

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

    def sweep_timers(
        self, status: Status, cursor: int, tasks: Sequence[str], count: int = 500
    ) -> tuple[int, list[tuple[str, str]]]:
        """One step of a scan over the sessions in ``status``: the (session id, task) of
        each ``tasks`` timer they lack, and the cursor of the next step (0: done)."""
        cursor, members = self.client.zscan(SessionKeys.index(status), cursor, count=count)
        ids = [
            member_session_id(decode_str(member))
            for member, _ in members
            if isinstance(member, bytes | str)
        ]
        wanted = [(session_id, task) for session_id in ids for task in tasks]
        with self.client.pipeline(transaction=False) as pipe:
            for session_id, task in wanted:
                pipe.zscore(ScheduleKeys.schedule(), f"{task}:{session_id}")
            scores = pipe.execute()
        return cursor, [pair for pair, score in zip(wanted, scores, strict=True) if score is None]

    def wait_for_replicas(self) -> None:
        """Return once everything written so far holds on the replicas ``durability``
        asks for; raise ReplicasBehind (a RedisError: the work is retried) otherwise."""
        wait_for_replicas(self.client, self.durability)

    def purge_session(self, session_id: str, recording_ids: Sequence[str]) -> None:
        """Delete the session and everything hanging off it: timeline, applied events,
        recordings' records, notifications and their attempts, index entries, timers, its
        VTS session's claim and stored callbacks (leaving a tombstone, see
        ``EventKeys.gone``), its idempotency record. Idempotent. The recordings' files are
        the caller's to delete first."""
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
        notifications = self.notifications.session_keys(session_id)
        doomed += notifications.keys
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
            pipe.zrem(ScheduleKeys.schedule(), *timer_entries(session_id), *notifications.timers)
            for index, notification_id in notifications.entries:
                pipe.zrem(index, notification_id)
            if uuid:
                # Late callbacks of the VTS session are dropped, not kept as orphans.
                pipe.set(EventKeys.gone(uuid), 1, ex=WEBHOOK_RETENTION_SECONDS)
            pipe.execute()


# Where the apply script puts a session's id in the names of its keys.
_ID = "{id}"
