"""The Redis store: the only code that knows key names.

Everything that changes several keys together does it in one Lua script (``scripts``), so
a crash can never leave a session without its index entry, or an accepted request without
its queued message. ``AsyncStore`` serves the web (redis.asyncio); ``Store`` serves the
workers; ``RecordingStore``/``AsyncRecordingStore`` keep recordings. All use clients with
``decode_responses=False`` so they can share dramatiq's connection.
"""

from service.store.codec import (
    Applied,
    CreateOutcome,
    EventChange,
    InvalidCursor,
    Page,
    decode_cursor,
    encode_cursor,
    index_member,
    timeline_entry,
)
from service.store.keys import (
    CHANNEL,
    DRAMATIQ_NAMESPACE,
    PREFIX,
    TIMELINE_LIMIT,
    WEBHOOK_RETENTION_SECONDS,
    Keys,
    RecordingKeys,
)
from service.store.recordings import RecordingStore
from service.store.web import AsyncRecordingStore, AsyncStore
from service.store.worker import Store

__all__ = [
    "CHANNEL",
    "DRAMATIQ_NAMESPACE",
    "PREFIX",
    "TIMELINE_LIMIT",
    "WEBHOOK_RETENTION_SECONDS",
    "Applied",
    "AsyncRecordingStore",
    "AsyncStore",
    "CreateOutcome",
    "EventChange",
    "InvalidCursor",
    "Keys",
    "Page",
    "RecordingKeys",
    "RecordingStore",
    "Store",
    "decode_cursor",
    "encode_cursor",
    "index_member",
    "timeline_entry",
]
