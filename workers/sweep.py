"""The backstop for timers: every live session must have its expiry and reconciliation
timers. The scripts that make a session live write them in the same step, so none should
ever be missing; a session found without one (written by hand, restored from an old
backup, or a bug) would otherwise stay live forever. The scheduler's leader runs one
step of this sweep now and then, a bounded number of sessions at a time, gives each
missing timer back, and counts it (``masking_timers_repaired``): any count is worth
looking into."""

from __future__ import annotations

import time

import structlog

from service.metrics import metrics
from service.models import LIVE
from workers.dependencies import Dependencies
from workers.sessions import EXPIRY_GRACE

log = structlog.get_logger(__name__)

SWEEP_EVERY_SECONDS = 30.0
TASKS = ("expire", "reconcile")


class TimerSweep:
    """Walks the live sessions one step at a time (a cursor per status), remembering
    where it stopped."""

    def __init__(self, every: float = SWEEP_EVERY_SECONDS) -> None:
        self._every = every
        self._cursors = dict.fromkeys(LIVE, 0)
        self._last = 0.0

    def maybe_step(self, deps: Dependencies) -> int:
        """Take a step if the last was ``every`` seconds ago; return the timers repaired."""
        if time.monotonic() - self._last < self._every:
            return 0
        self._last = time.monotonic()
        return self.step(deps)

    def step(self, deps: Dependencies) -> int:
        repaired = 0
        for status, cursor in self._cursors.items():
            self._cursors[status], missing = deps.sessions.sweep_timers(status, cursor, TASKS)
            for session_id, task in missing:
                repaired += _repair(deps, session_id, task)
        return repaired


def _repair(deps: Dependencies, session_id: str, task: str) -> int:
    session = deps.sessions.get_session(session_id)
    if session is None or session.status not in LIVE:
        return 0
    if task == "expire":
        due = (session.expires_at or deps.clock()) + EXPIRY_GRACE
    else:
        due = deps.clock() + deps.reconcile_every
    deps.schedule.schedule(task, session_id, due, only_if_missing=True)
    metrics().timers_repaired.labels(task).inc()
    log.warning("session_timer_repaired", session_id=session_id, task=task)
    return 1
