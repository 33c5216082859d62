"""Redis key names: this package is the only code that knows them (dramatiq's own
layout included, for the messages we enqueue without a broker)."""

from __future__ import annotations

import hashlib

from service.models import Status

PREFIX = "masking:"
# dramatiq's Redis broker keeps queue ``q`` as a list ``dramatiq:q`` of message ids and a
# hash ``dramatiq:q.msgs`` of id -> message; enqueueing is those two writes.
DRAMATIQ_NAMESPACE = "dramatiq"
CHANNEL = PREFIX + "session-changes"
TIMELINE_LIMIT = 1000
# How long raw callbacks (and the nonces that came with them) are kept: for replays,
# duplicate detection and audits.
WEBHOOK_RETENTION_SECONDS = 7 * 24 * 3600
# How long an ended session and everything hanging off it are kept, unless configured.
SESSION_RETENTION_SECONDS = 30 * 24 * 3600


class Keys:
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
    def in_flight(session_uuid: str) -> str:
        """The VTS session's events stored but not applied yet: a zset of event id ->
        received (ms), an hour's TTL renewed by each new event."""
        return f"{PREFIX}vts-session:{session_uuid}:events-in-flight"

    @staticmethod
    def callbacks(session_uuid: str) -> str:
        """The ids of the VTS session's stored callbacks (kept as long as they are), so
        that they go with the session when it is purged or erased."""
        return f"{PREFIX}vts-session:{session_uuid}:callbacks"

    @staticmethod
    def session_lock(session_id: str) -> str:
        return f"{PREFIX}lock:session:{session_id}"

    @staticmethod
    def vts_rate_limit(auth_id: str) -> str:
        return f"{PREFIX}rate-limit:vts:{auth_id}"

    @staticmethod
    def webhook(event_id: str) -> str:
        return f"{PREFIX}webhook:{event_id}"

    @staticmethod
    def webhooks() -> str:
        return f"{PREFIX}webhooks"

    @staticmethod
    def nonce(nonce: str) -> str:
        return f"{PREFIX}nonce:{nonce}"

    @staticmethod
    def webhook_stats() -> str:
        return f"{PREFIX}stats:webhooks"

    @staticmethod
    def applied(session_id: str) -> str:
        return f"{PREFIX}session:{session_id}:applied"

    @staticmethod
    def orphan_events() -> str:
        return f"{PREFIX}orphan-events"

    @staticmethod
    def event_stats() -> str:
        return f"{PREFIX}stats:events"

    @staticmethod
    def reconcile_stats() -> str:
        return f"{PREFIX}stats:reconcile"

    @staticmethod
    def schedule() -> str:
        return f"{PREFIX}schedule"

    @staticmethod
    def scheduler_leader() -> str:
        return f"{PREFIX}scheduler-leader"

    @staticmethod
    def queue(queue_name: str) -> str:
        return f"{DRAMATIQ_NAMESPACE}:{queue_name}"

    @staticmethod
    def dead_letters(queue_name: str) -> str:
        return f"{DRAMATIQ_NAMESPACE}:{queue_name}.XQ"

    @staticmethod
    def dead_letter_messages(queue_name: str) -> str:
        return f"{DRAMATIQ_NAMESPACE}:{queue_name}.XQ.msgs"

    @staticmethod
    def dead_letter_note(redis_id: str) -> str:
        return f"{PREFIX}dead-letter-error:{redis_id}"

    @staticmethod
    def queue_messages(queue_name: str) -> str:
        return f"{DRAMATIQ_NAMESPACE}:{queue_name}.msgs"


class RecordingKeys:
    @staticmethod
    def recording(recording_id: str) -> str:
        return f"{PREFIX}recording:{recording_id}"

    @staticmethod
    def session_recordings(session_id: str) -> str:
        return f"{PREFIX}session:{session_id}:recordings"


class AppKeys:
    @staticmethod
    def apps() -> str:
        """Hash: app name -> its record (JSON: created_at, source, notification secrets)."""
        return f"{PREFIX}apps"

    @staticmethod
    def keys() -> str:
        """Hash: SHA-256 of a managed API key -> the app it belongs to (JSON)."""
        return f"{PREFIX}app-keys"

    @staticmethod
    def budget(app: str) -> str:
        """Sorted set: the app's recent VTS requests, scored by when they count (ms)."""
        return f"{PREFIX}app:{app}:vts-budget"

    @staticmethod
    def pending_update(session_id: str) -> str:
        """Hash: changes asked for a session and not yet sent to VTS (field -> JSON), plus
        who asked and whether an update is on its way."""
        return f"{PREFIX}session:{session_id}:pending-update"

    @staticmethod
    def update_sent(session_id: str) -> str:
        """Set (with a TTL of the update interval) when an update was sent to VTS."""
        return f"{PREFIX}session:{session_id}:update-sent"
