"""Every Redis key name of the service in one place, for tests that read Redis directly.

The names belong to the store's concept modules (``sessions``, ``events``, ``schedule``,
``queue``, ``deadletters``, ``recordings``, ``apps``, ``notifications``), each of which
owns its keys, their fields and their lifetimes. No product module imports this one, the
store's included (an architecture test checks it): code outside the store reaches Redis
through its methods.
"""

from __future__ import annotations

from service.store.apps import AppKeys
from service.store.deadletters import DeadLetterKeys
from service.store.endpoints import EndpointKeys
from service.store.events import WEBHOOK_RETENTION_SECONDS, EventKeys
from service.store.names import PREFIX
from service.store.notifications import NotificationKeys
from service.store.queue import DRAMATIQ_NAMESPACE, QueueKeys
from service.store.recordings import RecordingKeys
from service.store.schedule import ScheduleKeys
from service.store.sessions import (
    CHANNEL,
    PENDING_UPDATE_TTL,
    SESSION_RETENTION_SECONDS,
    TIMELINE_LIMIT,
    SessionKeys,
)

__all__ = [
    "CHANNEL",
    "DRAMATIQ_NAMESPACE",
    "PENDING_UPDATE_TTL",
    "PREFIX",
    "SESSION_RETENTION_SECONDS",
    "TIMELINE_LIMIT",
    "WEBHOOK_RETENTION_SECONDS",
    "AppKeys",
    "Keys",
    "RecordingKeys",
]


class Keys(
    SessionKeys,
    EventKeys,
    ScheduleKeys,
    QueueKeys,
    DeadLetterKeys,
    AppKeys,
    NotificationKeys,
    EndpointKeys,
):
    """All the keys but recordings' (``RecordingKeys``)."""
