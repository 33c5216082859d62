"""Events: the raw VTS callbacks stored for replays and audits, the nonces that came with
them, the per-VTS-session sets of callbacks and of events in flight, the per-session
``applied`` markers, orphan events and the event totals.

Stored callbacks and nonces expire after ``WEBHOOK_RETENTION_SECONDS``; the ``webhooks``
and ``orphan-events`` indexes are trimmed in step; the ``applied`` set goes with its session.
"""

from __future__ import annotations

from service.store.names import PREFIX

# How long raw callbacks (and the nonces that came with them) are kept: for replays,
# duplicate detection and audits.
WEBHOOK_RETENTION_SECONDS = 7 * 24 * 3600


class EventKeys:
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


# Totals of callbacks and of events by outcome (hashes; bounded by the outcomes).
WEBHOOK_STATS = EventKeys.webhook_stats()
EVENT_STATS = EventKeys.event_stats()
