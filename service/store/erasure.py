"""Erasure: an ended session's personal data erased and its files' deletion queued, in one
script across the keys of every concept (sessions, recordings, the queue, events,
notifications, the schedule).

The erasure is a class of its own rather than a method of ``AsyncSessions``: the script
reaches into each concept's keys, and waits for the replicas before it answers.
"""

from __future__ import annotations

from enum import StrEnum

import msgspec
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


class EraseResult(StrEnum):
    """What an erasure did: ``erased``, ``already`` (erased before: nothing done),
    ``live`` (the session has not ended: nothing done) or ``missing``."""

    ERASED = "erased"
    ALREADY = "already"
    LIVE = "live"
    MISSING = "missing"


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
    ) -> tuple[EraseResult, Status | None]:
        """Erase an ended session's personal data and queue its files' deletion, atomically.

        The parties become ``masked``, metadata and the idempotency record go, recordings
        become ``deleted``, stored callbacks go; counters and the timeline stay (``entry``
        is added). Returns the outcome and the status the session had (see ``erase.lua``).
        """
        uuid = session.vts_session_uuid
        first, second = masked
        arguments = {
            "session_id": session.id,
            "first_party": first,
            "second_party": second,
            "at": at,
            "entry": entry,
            "channel": CHANNEL,
            "message_id": message.redis_message_id,
            "payload": message.payload.decode(),
            "recording_prefix": RecordingKeys.recording(""),
            "callback_prefix": EventKeys.webhook(""),
            "notification_prefix": NotificationKeys.notification(""),
            "attempts_prefix": NotificationKeys.notification_attempts(""),
            "app_notifications_prefix": NotificationKeys.app_notifications(""),
        }
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
            args=[msgspec.json.encode(arguments)],
        )
        await wait_for_replicas_async(self.client, self.durability)
        status = decode_str(current)
        return EraseResult(decode_str(result)), Status(status) if status else None
