"""The Redis store: the only code that knows key names.

It is organised by concept: ``sessions``, ``events``, ``schedule``, ``queue`` (dramatiq's
layout and dead letters), ``recordings`` and ``apps`` each own their keys and lifetimes;
``keys`` gathers every name for tests and is private to the store.

Everything that changes several keys together does it in one Lua script (``scripts``), so
a crash can never leave a session without its index entry, or an accepted request without
its queued message. ``AsyncStore`` serves the web (redis.asyncio); ``Store`` serves the
workers; ``RecordingStore``/``AsyncRecordingStore`` keep recordings. All use clients with
``decode_responses=False`` so they can share dramatiq's connection.
"""

from service.store.apps import reconcile_rate_limit_key, vts_rate_limit_key
from service.store.codec import Applied, ApplyOutcome, timeline_entry
from service.store.events import WEBHOOK_RETENTION_SECONDS
from service.store.names import PREFIX
from service.store.queue import DRAMATIQ_NAMESPACE
from service.store.recordings import AsyncRecordingStore, RecordingStore
from service.store.sessions import (
    CHANNEL,
    TIMELINE_LIMIT,
    CreateOutcome,
    CreateResult,
    InvalidCursor,
    Outcome,
    Page,
    decode_cursor,
    encode_cursor,
    index_member,
)
from service.store.web import AsyncStore
from service.store.worker import Store

__all__ = [
    "CHANNEL",
    "DRAMATIQ_NAMESPACE",
    "PREFIX",
    "TIMELINE_LIMIT",
    "WEBHOOK_RETENTION_SECONDS",
    "Applied",
    "ApplyOutcome",
    "AsyncRecordingStore",
    "AsyncStore",
    "CreateOutcome",
    "CreateResult",
    "InvalidCursor",
    "Outcome",
    "Page",
    "RecordingStore",
    "Store",
    "decode_cursor",
    "encode_cursor",
    "index_member",
    "reconcile_rate_limit_key",
    "timeline_entry",
    "vts_rate_limit_key",
]
