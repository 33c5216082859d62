"""Per-session locks are short leases, renewed while work runs and fenced by their owner
token: a dead holder frees its session within seconds, a late one cannot clobber."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import pytest
import redis

from service.errors import SessionBusy
from service.models import Status
from service.store import Sessions
from service.store.keys import Keys
from tests.conftest import stored_session, wait_until
from workers import leases

SESSION = "ses_" + "f" * 32


@pytest.fixture
def sessions(redis_client: redis.Redis) -> Sessions:
    return Sessions(redis_client)


def test_a_lease_is_renewed_while_its_work_runs(sessions: Sessions) -> None:
    """Work that outlasts several leases keeps the session: nobody else can take it."""
    lease = timedelta(milliseconds=300)
    with leases.held(sessions, SESSION, lease):
        until = time.monotonic() + 4 * lease.total_seconds()
        while time.monotonic() < until:
            with pytest.raises(SessionBusy), leases.held(sessions, SESSION, lease):
                pass
            time.sleep(0.05)
    with leases.held(sessions, SESSION, lease):  # released at the end
        pass


def test_a_write_under_a_lapsed_lease_is_fenced(
    sessions: Sessions, redis_url: str, redis_client: redis.Redis
) -> None:
    """A holder whose lease passed to another worker writes nothing."""
    session = stored_session(redis_url, SESSION)
    assert sessions.lock_session(session.id, "stalled", 1)
    wait_until(lambda: not redis_client.exists(Keys.session_lock(session.id)))
    with leases.held(sessions, session.id) as fence:
        late = sessions.transition(
            session.id, Status.FAILED, allowed=[Status.PENDING], fence="stalled"
        )
        assert late == ("fenced", Status.PENDING)
        assert sessions.transition(
            session.id, Status.ACTIVE, allowed=[Status.PENDING], fence=fence
        ) == ("ok", Status.PENDING)
    assert sessions.get_session(session.id).status is Status.ACTIVE  # type: ignore[union-attr]


_HOLDER = """
import sys, time, redis
from datetime import timedelta
from service.store import Sessions
from workers import leases
lease = timedelta(seconds=float(sys.argv[3]))
with leases.held(Sessions(redis.Redis.from_url(sys.argv[1])), sys.argv[2], lease):
    print("holding", flush=True)
    time.sleep(600)
"""


def test_a_killed_holders_session_is_free_within_seconds(
    sessions: Sessions, redis_url: str
) -> None:
    """SIGKILL the process holding a session: another worker has it within one lease."""
    lease = timedelta(seconds=2)  # the mechanism is the same for LEASE's 5 s, only slower
    command = [sys.executable, "-c", _HOLDER, redis_url, SESSION, str(lease.total_seconds())]
    holder = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(SessionBusy), leases.held(sessions, SESSION):
            pass
        os.kill(holder.pid, signal.SIGKILL)
        killed = time.monotonic()
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()

    def free() -> bool:
        try:
            with leases.held(sessions, SESSION):
                return True
        except SessionBusy:
            return False

    wait_until(free, timeout=20, interval=0.1)
    # One lease, plus what a loaded machine may add to the polling; far from a long TTL.
    assert time.monotonic() - killed < lease.total_seconds() + 10
