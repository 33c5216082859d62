"""The schedule: one sorted set of session timers (``<task>:<session id>`` scored by when
they are due; a session's timers go with it) and the scheduler's leader lease (a key with
a TTL)."""

from __future__ import annotations

from service.store.names import PREFIX


class ScheduleKeys:
    @staticmethod
    def schedule() -> str:
        return f"{PREFIX}schedule"

    @staticmethod
    def scheduler_leader() -> str:
        return f"{PREFIX}scheduler-leader"
