"""Notifications to apps: a record per notification (its id is the ``webhook-id``), the
attempts made to deliver it, a per-session and a per-app index (by creation) and the
index of those pending; they live and die with their session (purged with it, deleted by
its erasure), so every index is bounded by the sessions kept.

A notification is recorded by the script that makes the change it tells of (see
``notify.lua``), which also puts its first attempt in the timer schedule as
``notify:<id>``; every later attempt is a timer too, so retries over a day survive any
restart and need nothing held in a worker's memory.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import msgspec
import redis
import redis.asyncio

from service.messages import Outgoing
from service.models import NotificationKind, iso, now
from service.store import lua
from service.store.codec import decode_str
from service.store.names import PREFIX
from service.store.queue import QueueKeys
from service.store.schedule import ScheduleKeys

# How long a ping's result waits for the web request that asked for it.
PING_RESULT_SECONDS = 60
# How often a web request looks for its ping's result.
PING_POLL_SECONDS = 0.05

# Records queued again per round trip by a recovery.
RECOVER_BATCH = 500

# Attempts kept per notification: a day of retries makes fewer; redeliveries add more.
ATTEMPTS_KEPT = 50


class State(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    DISCARDED = "discarded"


class RequeueResult(StrEnum):
    """What queueing a notification again did (see ``notification_requeue.lua``):
    ``queued``, ``skipped`` (delivered or discarded, when only undelivered ones are
    queued) or ``missing`` (gone, or another app's)."""

    QUEUED = "queued"
    SKIPPED = "skipped"
    MISSING = "missing"


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
    def app_notifications(app: str) -> str:
        """Sorted set: the app's notification ids, scored by creation (ms)."""
        return f"{PREFIX}app-notifications:{app}"

    @staticmethod
    def pending_notifications() -> str:
        """Sorted set: the pending notification ids, scored by when they became pending."""
        return f"{PREFIX}notifications-pending"

    @staticmethod
    def ping_result(ping_id: str) -> str:
        """A ping's attempt (JSON), for the web request awaiting it; short-lived."""
        return f"{PREFIX}ping:{ping_id}"

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
        "app": NotificationKeys.app_notifications(""),
        "pending": NotificationKeys.pending_notifications(),
        "schedule": ScheduleKeys.schedule(),
    }
    table = ", ".join(f"{name} = '{value}'" for name, value in names.items())
    return f"local NOTIFICATION_KEYS = {{{table}}}\n{lua.source('notify.lua')}"


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
    type: NotificationKind
    session_id: str
    app: str
    created_at: str
    state: State
    next_attempt_at: str | None
    attempts: list[Attempt] = field(default_factory=list)
    # Failed attempts since it was recorded, redelivered or recovered: the retry
    # schedule's position.
    failures: int = 0

    @classmethod
    def from_fields(cls, fields: Mapping[str, str], attempts: Sequence[bytes]) -> Notification:
        return cls(
            id=fields["id"],
            type=NotificationKind(fields["type"]),
            session_id=fields["session_id"],
            app=fields.get("app", ""),
            created_at=fields["created_at"],
            state=State(fields["state"]),
            next_attempt_at=fields.get("next_attempt_at") or None,
            attempts=[msgspec.json.decode(raw, type=Attempt) for raw in attempts],
            failures=int(fields.get("failures") or 0),
        )


def _requeue_call(
    notification_id: str, app: str | None, *, undelivered: bool, moment: datetime
) -> tuple[list[str], list[bytes]]:
    keys = [
        NotificationKeys.notification(notification_id),
        ScheduleKeys.schedule(),
        NotificationKeys.pending_notifications(),
    ]
    arguments = {
        "notification_id": notification_id,
        "app": app or "",
        "undelivered": undelivered,
        "now_ms": int(moment.timestamp() * 1000),
        "now": iso(moment),
        "timer": NotificationKeys.notification_timer(notification_id),
    }
    return keys, [msgspec.json.encode(arguments)]


def _decode_record(raw: Mapping[bytes, bytes], attempts: Sequence[bytes]) -> Notification | None:
    if not raw:
        return None
    return Notification.from_fields(
        {decode_str(k): decode_str(v) for k, v in raw.items()}, attempts
    )


def _ids(raw: Sequence[Any]) -> list[str]:
    return [decode_str(item) for item in raw if isinstance(item, bytes | str)]


@dataclass(frozen=True)
class SessionNotifications:
    """What a session's purge deletes: its notifications' keys, their timers, and their
    entries in the app and pending indexes ((key, member) pairs)."""

    keys: list[str]
    timers: list[str]
    entries: list[tuple[str, str]]


def oldest_pending_age(client: redis.Redis) -> float:
    """Seconds since the longest-pending notification became pending; 0 when none."""
    oldest = client.zrange(NotificationKeys.pending_notifications(), 0, 0, withscores=True)
    if not oldest:
        return 0.0
    return max(0.0, now().timestamp() - float(oldest[0][1]) / 1000)


class NotificationStore:
    """Notification records, for the workers that deliver them and the tools."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._attempted = client.register_script(lua.source("notification_attempted.lua"))
        self._requeue = client.register_script(lua.source("notification_requeue.lua"))

    def get(self, notification_id: str) -> Notification | None:
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(NotificationKeys.notification(notification_id))
            pipe.lrange(NotificationKeys.notification_attempts(notification_id), 0, -1)
            raw, attempts = pipe.execute()
        return _decode_record(raw, attempts)

    def ids(self, session_id: str) -> list[str]:
        """The ids of the session's notifications, oldest first."""
        return _ids(self.client.zrange(NotificationKeys.session_notifications(session_id), 0, -1))

    def app_ids(self, app: str, since: datetime | None = None) -> list[str]:
        """The ids of the app's notifications (created at or after ``since``), oldest first."""
        low = int(since.timestamp() * 1000) if since else "-inf"
        key = NotificationKeys.app_notifications(app)
        return _ids(self.client.zrangebyscore(key, low, "+inf"))

    def apps(self) -> list[str]:
        """The apps that have notifications."""
        prefix = NotificationKeys.app_notifications("")
        found = self.client.scan_iter(match=prefix + "*", count=500)
        return sorted(decode_str(key)[len(prefix) :] for key in found)

    def for_session(self, session_id: str) -> list[Notification]:
        """The session's notifications, oldest first."""
        return self.records(self.ids(session_id))

    def records(self, ids: Sequence[str]) -> list[Notification]:
        """The records of ``ids`` that still exist, in that order."""
        found = (self.get(notification_id) for notification_id in ids)
        return [notification for notification in found if notification is not None]

    def attempted(
        self,
        notification_id: str,
        attempt: Attempt | None,
        state: State,
        next_at: datetime | None,
        failures: int = 0,
    ) -> bool:
        """Note ``attempt`` (None: given up without one) and the notification's new
        ``state`` and ``failures``; with ``next_at``, its next attempt is due then, else it
        has none. False when the record is gone."""
        arguments: dict[str, Any] = {
            "notification_id": notification_id,
            "attempts_kept": ATTEMPTS_KEPT,
            "state": state.value,
            "failures": failures,
            "next_attempt_at": iso(next_at) or "",
            "timer": NotificationKeys.notification_timer(notification_id),
        }
        if attempt is not None:
            arguments["attempt"] = msgspec.json.encode(attempt).decode()
        if next_at is not None:
            arguments["due_ms"] = int(next_at.timestamp() * 1000)
        return bool(
            self._attempted(
                keys=[
                    NotificationKeys.notification(notification_id),
                    NotificationKeys.notification_attempts(notification_id),
                    ScheduleKeys.schedule(),
                    NotificationKeys.pending_notifications(),
                ],
                args=[msgspec.json.encode(arguments)],
            )
        )

    def requeue(
        self, notification_id: str, app: str | None = None, *, undelivered: bool = False
    ) -> RequeueResult:
        """Queue an attempt now (see ``notification_requeue.lua``)."""
        keys, args = _requeue_call(notification_id, app, undelivered=undelivered, moment=now())
        return RequeueResult(decode_str(self._requeue(keys=keys, args=args)))

    def recover(self, app: str, since: datetime) -> int:
        """Queue again every notification of ``app`` created since ``since`` and not
        delivered; how many."""
        ids, moment, outcomes = self.app_ids(app, since), now(), []
        for start in range(0, len(ids), RECOVER_BATCH):
            with self.client.pipeline(transaction=False) as pipe:
                for notification_id in ids[start : start + RECOVER_BATCH]:
                    keys, args = _requeue_call(
                        notification_id, app, undelivered=True, moment=moment
                    )
                    self._requeue(keys=keys, args=args, client=pipe)
                outcomes += pipe.execute()
        return sum(decode_str(outcome) == RequeueResult.QUEUED for outcome in outcomes)

    def ping_result(self, ping_id: str, result: bytes) -> None:
        """Hand a ping's result to the web request awaiting it."""
        self.client.set(NotificationKeys.ping_result(ping_id), result, ex=PING_RESULT_SECONDS)

    def unschedule(self, notification_id: str) -> None:
        """Drop the notification's next attempt, if it has one."""
        timer = NotificationKeys.notification_timer(notification_id)
        self.client.zrem(ScheduleKeys.schedule(), timer)

    def session_keys(self, session_id: str) -> SessionNotifications:
        """Every key of the session's notifications, their timer members and index
        entries: what its purge deletes."""
        ids = self.ids(session_id)
        with self.client.pipeline(transaction=False) as pipe:
            for notification_id in ids:
                pipe.hget(NotificationKeys.notification(notification_id), "app")
            apps = pipe.execute()
        keys = [NotificationKeys.session_notifications(session_id)]
        keys += [NotificationKeys.notification(i) for i in ids]
        keys += [NotificationKeys.notification_attempts(i) for i in ids]
        entries = [(NotificationKeys.pending_notifications(), i) for i in ids]
        entries += [
            (NotificationKeys.app_notifications(decode_str(app)), i)
            for i, app in zip(ids, apps, strict=True)
            if app is not None
        ]
        timers = [NotificationKeys.notification_timer(i) for i in ids]
        return SessionNotifications(keys, timers, entries)


class AsyncNotificationStore:
    """What the web needs: an app's records, and their redelivery and recovery."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client
        self._requeue = client.register_script(lua.source("notification_requeue.lua"))

    async def for_session(self, session_id: str) -> list[Notification]:
        """The session's notifications with their attempts, oldest first."""
        key = NotificationKeys.session_notifications(session_id)
        ids = _ids(await self.client.zrange(key, 0, -1))
        async with self.client.pipeline(transaction=False) as pipe:
            for notification_id in ids:
                pipe.hgetall(NotificationKeys.notification(notification_id))
                pipe.lrange(NotificationKeys.notification_attempts(notification_id), 0, -1)
            replies = await pipe.execute()
        found = (_decode_record(r, a) for r, a in zip(replies[::2], replies[1::2], strict=True))
        return [record for record in found if record is not None]

    async def get(self, notification_id: str) -> Notification | None:
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(NotificationKeys.notification(notification_id))
            pipe.lrange(NotificationKeys.notification_attempts(notification_id), 0, -1)
            raw, attempts = await pipe.execute()
        return _decode_record(raw, attempts)

    async def latest_session(self, app: str) -> str | None:
        """The session of the app's latest notification, if it has one."""
        latest = _ids(await self.client.zrange(NotificationKeys.app_notifications(app), -1, -1))
        if not latest:
            return None
        session_id = await self.client.hget(NotificationKeys.notification(latest[0]), "session_id")
        return decode_str(session_id) if session_id else None

    async def ping(self, message: Outgoing, ping_id: str, wait: float) -> bytes | None:
        """Queue the ping ``message`` and await its result (JSON) for up to ``wait``
        seconds; None if it did not come."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(QueueKeys.queue_messages(message.queue_name), message.redis_message_id,
                      message.payload)  # fmt: skip
            pipe.rpush(QueueKeys.queue(message.queue_name), message.redis_message_id)
            await pipe.execute()
        key = NotificationKeys.ping_result(ping_id)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            found = await self.client.get(key)
            if found is not None:
                return found if isinstance(found, bytes) else found.encode()
            await asyncio.sleep(PING_POLL_SECONDS)
        return None

    async def requeue(
        self, notification_id: str, app: str, *, undelivered: bool = False
    ) -> RequeueResult:
        """Queue an attempt now (see ``notification_requeue.lua``)."""
        keys, args = _requeue_call(notification_id, app, undelivered=undelivered, moment=now())
        return RequeueResult(decode_str(await self._requeue(keys=keys, args=args)))

    async def recover(self, app: str, since: datetime) -> int:
        """Queue again every notification of ``app`` created since ``since`` and not
        delivered; how many."""
        key = NotificationKeys.app_notifications(app)
        ids = _ids(await self.client.zrangebyscore(key, int(since.timestamp() * 1000), "+inf"))
        moment, outcomes = now(), []
        for start in range(0, len(ids), RECOVER_BATCH):
            async with self.client.pipeline(transaction=False) as pipe:
                for notification_id in ids[start : start + RECOVER_BATCH]:
                    keys, args = _requeue_call(
                        notification_id, app, undelivered=True, moment=moment
                    )
                    await self._requeue(keys=keys, args=args, client=pipe)
                outcomes += await pipe.execute()
        return sum(decode_str(outcome) == RequeueResult.QUEUED for outcome in outcomes)
