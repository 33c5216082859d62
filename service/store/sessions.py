"""Sessions: the session hash (both parties, status, counters), its timeline, the status
indexes, idempotency records, the VTS session index, the session lock and the changes
waiting for a VTS update.

An ended session and everything listed here are deleted ``SESSION_RETENTION_SECONDS``
after it ended (unless configured otherwise); live ones keep no TTL but are bounded by the
sessions apps keep open.
"""

from __future__ import annotations

import hashlib

from service.models import Status
from service.store.names import PREFIX

# Where every change of a session is published (for the web's watchers).
CHANNEL = PREFIX + "session-changes"
TIMELINE_LIMIT = 1000
# How long an ended session and everything hanging off it are kept, unless configured.
SESSION_RETENTION_SECONDS = 30 * 24 * 3600
# How long changes asked for a session may wait for their VTS update before they are
# dropped: longer than any session lives.
PENDING_UPDATE_TTL = 2 * 24 * 3600


class SessionKeys:
    @staticmethod
    def session(session_id: str) -> str:
        return f"{PREFIX}session:{session_id}"

    @staticmethod
    def timeline(session_id: str) -> str:
        return f"{PREFIX}session:{session_id}:events"

    @staticmethod
    def index(status: Status | None = None) -> str:
        return f"{PREFIX}sessions" if status is None else f"{PREFIX}sessions:status:{status}"

    @staticmethod
    def idempotency(scope: str, key: str) -> str:
        digest = hashlib.sha256(f"{scope}\0{key}".encode()).hexdigest()
        return f"{PREFIX}idempotency:{digest}"

    @staticmethod
    def vts_session(session_uuid: str) -> str:
        return f"{PREFIX}vts-session:{session_uuid}"

    @staticmethod
    def session_lock(session_id: str) -> str:
        return f"{PREFIX}lock:session:{session_id}"

    @staticmethod
    def pending_update(session_id: str) -> str:
        """Hash: changes asked for a session and not yet sent to VTS (field -> JSON), plus
        who asked and whether an update is on its way."""
        return f"{PREFIX}session:{session_id}:pending-update"

    @staticmethod
    def update_sent(session_id: str) -> str:
        """Set (with a TTL of the update interval) when an update was sent to VTS."""
        return f"{PREFIX}session:{session_id}:update-sent"

    @staticmethod
    def reconcile_stats() -> str:
        return f"{PREFIX}stats:reconcile"


# Totals of the differences reconciliation corrected, by counter (a hash; bounded).
RECONCILE_STATS = SessionKeys.reconcile_stats()
