"""Notifications to apps: a record per notification (its id is the ``webhook-id``), the
attempts made to deliver it, and a per-session index; they live and die with their
session (purged with it, deleted by its erasure).

A notification is recorded by the script that makes the change it tells of (see
``notify.lua``), which also puts its first attempt in the timer schedule as
``notify:<id>``; every later attempt is a timer too, so retries over a day survive any
restart and need nothing held in a worker's memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from importlib import resources

import msgspec
import redis

from service.models import iso
from service.store.codec import decode_str
from service.store.names import PREFIX
from service.store.schedule import ScheduleKeys

# Attempts kept per notification: a day of retries makes fewer; redeliveries add more.
ATTEMPTS_KEPT = 50


class State(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    DISCARDED = "discarded"


class NotificationKeys:
    @staticmethod
    def notification(notification_id: str) -> str:
        return f"{PREFIX}notification:{notification_id}"

    @staticmethod
    def notification_attempts(notification_id: str) -> str:
        return f"{PREFIX}notification-attempts:{notification_id}"

    @staticmethod
    def session_notifications(session_id: str) -> str:
        return f"{PREFIX}session:{session_id}:notifications"

    @staticmethod
    def notification_timer(notification_id: str) -> str:
        """The notification's member of the timer schedule."""
        return f"notify:{notification_id}"


def _lua() -> str:
    """``notify.lua`` with the key names it needs, from the one place that knows them."""
    names = {
        "record": NotificationKeys.notification(""),
        "attempts": NotificationKeys.notification_attempts(""),
        "session": NotificationKeys.session_notifications("{id}"),
        "schedule": ScheduleKeys.schedule(),
    }
    table = ", ".join(f"{name} = '{value}'" for name, value in names.items())
    source = resources.files(__package__).joinpath("notify.lua").read_text(encoding="utf-8")
    return f"local NOTIFICATION_KEYS = {{{table}}}\n{source}"


# Included ahead of every script that records notifications.
RECORD_NOTIFICATION = _lua()


class Attempt(msgspec.Struct, frozen=True, omit_defaults=True):
    """One try at delivering: when, the receiver's HTTP status or the error's class, and
    how long it took (ms)."""

    at: str
    latency_ms: float
    status: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class Notification:
    id: str
    type: str
    session_id: str
    app: str
    created_at: str
    state: State
    next_attempt_at: str | None
    attempts: list[Attempt] = field(default_factory=list)

    @classmethod
    def from_fields(cls, fields: Mapping[str, str], attempts: Sequence[bytes]) -> Notification:
        return cls(
            id=fields["id"],
            type=fields["type"],
            session_id=fields["session_id"],
            app=fields.get("app", ""),
            created_at=fields["created_at"],
            state=State(fields["state"]),
            next_attempt_at=fields.get("next_attempt_at") or None,
            attempts=[msgspec.json.decode(raw, type=Attempt) for raw in attempts],
        )


# KEYS: record, attempts, schedule. ARGV: attempt (JSON), state, next attempt at (ISO, ''
# when none), next attempt at (epoch ms, '' when none), timer member, attempts kept.
# Notes an attempt and what follows it, unless the record is gone (purged, erased).
# Returns 1 when noted, 0 when the record is gone.
ATTEMPTED = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[6]), -1)
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'next_attempt_at', ARGV[3])
if ARGV[4] == '' then
  redis.call('ZREM', KEYS[3], ARGV[5])
else
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[5])
end
return 1
"""


class NotificationStore:
    """Notification records, for the workers that deliver them and the tools."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._attempted = client.register_script(ATTEMPTED)

    def get(self, notification_id: str) -> Notification | None:
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(NotificationKeys.notification(notification_id))
            pipe.lrange(NotificationKeys.notification_attempts(notification_id), 0, -1)
            raw, attempts = pipe.execute()
        if not raw:
            return None
        return Notification.from_fields(
            {decode_str(k): decode_str(v) for k, v in raw.items()}, attempts
        )

    def ids(self, session_id: str) -> list[str]:
        """The ids of the session's notifications, oldest first."""
        raw = self.client.zrange(NotificationKeys.session_notifications(session_id), 0, -1)
        return [decode_str(item) for item in raw if isinstance(item, bytes | str)]

    def for_session(self, session_id: str) -> list[Notification]:
        """The session's notifications, oldest first."""
        found = (self.get(notification_id) for notification_id in self.ids(session_id))
        return [notification for notification in found if notification is not None]

    def attempted(
        self, notification_id: str, attempt: Attempt, state: State, next_at: datetime | None
    ) -> bool:
        """Note ``attempt`` and the notification's new ``state``; with ``next_at``, its
        next attempt is due then, else it has none. False when the record is gone."""
        return bool(
            self._attempted(
                keys=[
                    NotificationKeys.notification(notification_id),
                    NotificationKeys.notification_attempts(notification_id),
                    ScheduleKeys.schedule(),
                ],
                args=[
                    msgspec.json.encode(attempt),
                    state.value,
                    iso(next_at) or "",
                    int(next_at.timestamp() * 1000) if next_at else "",
                    NotificationKeys.notification_timer(notification_id),
                    ATTEMPTS_KEPT,
                ],
            )
        )

    def unschedule(self, notification_id: str) -> None:
        """Drop the notification's next attempt, if it has one."""
        timer = NotificationKeys.notification_timer(notification_id)
        self.client.zrem(ScheduleKeys.schedule(), timer)

    def session_keys(self, session_id: str) -> tuple[list[str], list[str]]:
        """Every key of the session's notifications, and their timer members: what its
        purge or erasure deletes."""
        ids = self.ids(session_id)
        keys = [NotificationKeys.session_notifications(session_id)]
        keys += [NotificationKeys.notification(i) for i in ids]
        keys += [NotificationKeys.notification_attempts(i) for i in ids]
        return keys, [NotificationKeys.notification_timer(i) for i in ids]
