"""Retention: purging an ended session and everything hanging off it, across the keys of
every concept (sessions, events, recordings, notifications, the schedule).

The purge is a class of its own rather than a method of ``Sessions``: it reads and
deletes what each concept keeps of the session, and the notifications' share it asks of
their store (``NotificationStore.session_keys``).
"""

from __future__ import annotations

from collections.abc import Sequence

import redis

from service.models import Status
from service.store.codec import decode_str
from service.store.events import WEBHOOK_RETENTION_SECONDS, EventKeys
from service.store.notifications import NotificationStore
from service.store.recordings import RecordingKeys
from service.store.schedule import ScheduleKeys, timer_entries
from service.store.sessions import SessionKeys


class Retention:
    """The purge of ended sessions; ``notifications`` tells which of their keys are the
    session's."""

    def __init__(self, client: redis.Redis, notifications: NotificationStore) -> None:
        self.client = client
        self.notifications = notifications

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
