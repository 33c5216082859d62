"""The schedule: one sorted set of session timers (``<task>:<session id>`` scored by when
they are due; a session's timers go with it) and the scheduler's leader lease (a key with
a TTL)."""

from __future__ import annotations

from datetime import datetime

import redis

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

# KEYS: schedule. ARGV: now (ms), limit, lease (ms). Returns the due entries and leases
# them: an entry comes due again after the lease unless its task reschedules or removes
# it, so a scheduler that dies after taking entries loses none.
TAKE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, entry in ipairs(due) do
  redis.call('ZADD', KEYS[1], ARGV[1] + ARGV[3], entry)
end
return due
"""

# KEYS: leader. ARGV: token, ttl (ms). Take or keep the lead; true if we hold it. The
# holder renews only once half the ttl has gone: asked every tick, a renewal each time
# would be a write (replicated, appended to the AOF) several times a second for nothing.
LEAD = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  if redis.call('PTTL', KEYS[1]) <= ARGV[2] / 2 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
  return 1
end
if not holder then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0
"""


def timer_entries(session_id: str) -> list[str]:
    """The schedule's members a session may have (one per kind of timer)."""
    return [f"{task}:{session_id}" for task in TIMERS]


class Schedule:
    """The workers' side of the schedule (a mixin of ``Store``)."""

    client: redis.Redis

    def _init_schedule(self) -> None:
        self._take_due = self.client.register_script(TAKE_DUE)
        self._lead = self.client.register_script(LEAD)

    def schedule(self, task: str, session_id: str, due: datetime) -> None:
        """Run ``task`` for the session at ``due`` (one entry per task and session)."""
        self.client.zadd(
            ScheduleKeys.schedule(), {f"{task}:{session_id}": int(due.timestamp() * 1000)}
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
