"""Per-session work locks as short leases, renewed while the work runs.

A lease lasts ``lease`` and a thread renews it every third of that while its holder
works, so a worker that dies (SIGKILL, a lost node) frees its sessions within one lease
rather than holding them until a long TTL runs out. Each lease has an owner token; writes
made under it are fenced by the token (the store refuses them once the lease has passed
to another worker), so a holder that stalled past its lease cannot clobber the new one.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import redis
import structlog

from service.errors import SessionBusy
from service.store import Sessions

log = structlog.get_logger(__name__)

LEASE = timedelta(seconds=5)


@contextmanager
def held(sessions: Sessions, session_id: str, lease: timedelta = LEASE) -> Iterator[str]:
    """Hold the session's lease while the block runs; yield its owner token (the fence for
    the block's writes). Raises SessionBusy when another worker holds it."""
    token = uuid.uuid4().hex
    lease_ms = max(1, int(lease.total_seconds() * 1000))
    if not sessions.lock_session(session_id, token, lease_ms):
        raise SessionBusy("another worker holds this session")
    stop = threading.Event()
    renewer = threading.Thread(
        target=_renew, args=(sessions, session_id, token, lease_ms, stop), daemon=True
    )
    renewer.start()
    try:
        yield token
    finally:
        stop.set()
        renewer.join()
        sessions.unlock_session(session_id, token)


def _renew(
    sessions: Sessions, session_id: str, token: str, lease_ms: int, stop: threading.Event
) -> None:
    while not stop.wait(lease_ms / 3000):
        try:
            if not sessions.renew_session_lock(session_id, token, lease_ms):
                # Our writes are fenced from now on; the work will learn it when it writes.
                log.warning("session_lease_lost")
                return
        except redis.RedisError as exc:
            # The lease may lapse meanwhile: fencing keeps a late write from clobbering.
            log.warning("session_lease_renewal_failed", reason=type(exc).__name__)
