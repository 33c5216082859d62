"""The schedule: one sorted set of session timers (``<task>:<session id>`` scored by when
they are due; a session's timers go with it) and the scheduler's leader lease (a key with
a TTL)."""

from __future__ import annotations

from datetime import datetime

import redis

from service.store import lua
from service.store.codec import decode_str
from service.store.names import PREFIX


class ScheduleKeys:
    @staticmethod
    def schedule() -> str:
        return f"{PREFIX}schedule"

    @staticmethod
    def scheduler_leader() -> str:
        return f"{PREFIX}scheduler-leader"


# Every kind of timer a session may have (see ``Schedule.schedule``).
TIMERS = ("expire", "reconcile", "update", "purge")


def timer_entries(session_id: str) -> list[str]:
    """The schedule's members a session may have (one per kind of timer)."""
    return [f"{task}:{session_id}" for task in TIMERS]


class Schedule:
    """The workers' side of the schedule: setting and taking timers, and the lead."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._take_due = client.register_script(lua.source("take_due.lua"))
        self._lead = client.register_script(lua.source("lead.lua"))

    def schedule(
        self, task: str, session_id: str, due: datetime, *, only_if_missing: bool = False
    ) -> None:
        """Run ``task`` for the session at ``due`` (one entry per task and session);
        ``only_if_missing`` leaves a timer already set as it is."""
        self.client.zadd(
            ScheduleKeys.schedule(),
            {f"{task}:{session_id}": int(due.timestamp() * 1000)},
            nx=only_if_missing,
        )

    def unschedule(self, task: str, session_id: str) -> None:
        self.client.zrem(ScheduleKeys.schedule(), f"{task}:{session_id}")

    def take_due(
        self, moment: datetime, limit: int = 100, lease_ms: int = 60_000
    ) -> list[tuple[str, str]]:
        """The (task, session id) pairs due at ``moment``, leased for ``lease_ms``."""
        due = self._take_due(
            keys=[ScheduleKeys.schedule()], args=[int(moment.timestamp() * 1000), limit, lease_ms]
        )
        pairs = (decode_str(entry).partition(":") for entry in due)
        return [(task, session_id) for task, _, session_id in pairs]

    def lead(self, token: str, ttl_ms: int) -> bool:
        """Take or keep the scheduler's lead; only one process holds it at a time."""
        return bool(self._lead(keys=[ScheduleKeys.scheduler_leader()], args=[token, ttl_ms]))
