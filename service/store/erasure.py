"""Erasure: an ended session's personal data erased and its files' deletion queued, in one
script across the keys of every concept (sessions, recordings, the queue, events,
notifications, the schedule).

The erasure is a class of its own rather than a method of ``AsyncSessions``: the script
reaches into each concept's keys, and waits for the replicas before it answers.
"""

from __future__ import annotations

import redis.asyncio

from service.messages import Outgoing
from service.models import Session, Status
from service.redis_clients import Durability, wait_for_replicas_async
from service.store import lua
from service.store.codec import decode_str
from service.store.events import EventKeys
from service.store.notifications import NotificationKeys
from service.store.queue import QueueKeys
from service.store.recordings import RecordingKeys
from service.store.schedule import ScheduleKeys
from service.store.sessions import CHANNEL, SessionKeys


class Erasure:
    """The web's erasure of ended sessions; it answers once the write holds on the
    replicas ``durability`` asks for."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        durability: Durability = Durability(),  # noqa: B008  (frozen: shared safely)
    ) -> None:
        self.client = client
        self.durability = durability
        self._erase = client.register_script(lua.source("erase.lua"))

    async def erase_session(
        self, session: Session, message: Outgoing, *, masked: tuple[str, str], at: str, entry: str
    ) -> tuple[str, Status | None]:
        """Erase an ended session's personal data and queue its files' deletion, atomically.

        The parties become ``masked``, metadata and the idempotency record go, recordings
        become ``deleted``, stored callbacks go; counters and the timeline stay (``entry``
        is added). Returns (``erased`` | ``already`` | ``live`` | ``missing``, status).
        """
        uuid = session.vts_session_uuid
        result, current = await self._erase(
            keys=[
                SessionKeys.session(session.id),
                SessionKeys.timeline(session.id),
                RecordingKeys.session_recordings(session.id),
                QueueKeys.queue(message.queue_name),
                QueueKeys.queue_messages(message.queue_name),
                EventKeys.webhooks(),
                EventKeys.callbacks(uuid) if uuid else "",
                NotificationKeys.session_notifications(session.id),
                ScheduleKeys.schedule(),
                NotificationKeys.pending_notifications(),
            ],
            args=[
                *masked,
                at,
                entry,
                CHANNEL,
                session.id,
                message.redis_message_id,
                message.payload,
                RecordingKeys.recording(""),
                EventKeys.webhook(""),
                NotificationKeys.notification(""),
                NotificationKeys.notification_attempts(""),
                NotificationKeys.app_notifications(""),
            ],
        )
        await wait_for_replicas_async(self.client, self.durability)
        status = decode_str(current)
        return decode_str(result), Status(status) if status else None
