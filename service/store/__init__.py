"""The Redis store: the only code that knows key names.

It is organised by concept, one small class per concept built from the client it is
given: ``Sessions``/``AsyncSessions`` (``sessions``), ``StoredEvents``/``AsyncStoredEvents``
(``events``), ``Schedule`` (``schedule``), ``Queue`` (``queue``: dramatiq's layout),
``DeadLetters`` (``deadletters``), ``RecordingStore``/``AsyncRecordingStore``
(``recordings``), ``AppStore`` (``apps``), ``NotificationStore`` (``notifications``) and
``EndpointHealth`` (``endpoints``) each own their keys and lifetimes. What reaches across
every concept has a class of its own: ``Retention`` purges an ended session, ``Erasure``
erases one. ``keys`` gathers every name for tests and is private to the store.

Everything that changes several keys together does it in one Lua script (``scripts``), so
a crash can never leave a session without its index entry, or an accepted request without
its queued message. The ``Async`` classes serve the web (redis.asyncio), the others the
workers and the tools; the worker's ``Dependencies`` and the web's app state hold them.
The web's writes share one ``GroupCommit`` (``batching``), given to each of its stores.
All use clients with ``decode_responses=False`` so they can share dramatiq's connection.
"""

from service.store.apps import reconcile_rate_limit_key, vts_rate_limit_key
from service.store.batching import GroupCommit
from service.store.codec import Applied, ApplyOutcome, timeline_entry
from service.store.deadletters import DeadLetters
from service.store.erasure import EraseResult, Erasure
from service.store.events import (
    WEBHOOK_RETENTION_SECONDS,
    AsyncStoredEvents,
    IngestResult,
    StoredEvents,
)
from service.store.names import PREFIX
from service.store.notifications import RequeueResult
from service.store.queue import DRAMATIQ_NAMESPACE, Queue
from service.store.recordings import AsyncRecordingStore, DeleteResult, RecordingStore
from service.store.retention import Retention
from service.store.schedule import Schedule
from service.store.sessions import (
    CHANNEL,
    TIMELINE_LIMIT,
    AsyncSessions,
    CreateOutcome,
    CreateResult,
    EnqueueResult,
    InvalidCursor,
    Outcome,
    Page,
    Sessions,
    UpdateResult,
    decode_cursor,
    encode_cursor,
    index_member,
)

__all__ = [
    "CHANNEL",
    "DRAMATIQ_NAMESPACE",
    "PREFIX",
    "TIMELINE_LIMIT",
    "WEBHOOK_RETENTION_SECONDS",
    "Applied",
    "ApplyOutcome",
    "AsyncRecordingStore",
    "AsyncSessions",
    "AsyncStoredEvents",
    "CreateOutcome",
    "CreateResult",
    "DeadLetters",
    "DeleteResult",
    "EnqueueResult",
    "EraseResult",
    "Erasure",
    "GroupCommit",
    "IngestResult",
    "InvalidCursor",
    "Outcome",
    "Page",
    "Queue",
    "RecordingStore",
    "RequeueResult",
    "Retention",
    "Schedule",
    "Sessions",
    "StoredEvents",
    "UpdateResult",
    "decode_cursor",
    "encode_cursor",
    "index_member",
    "reconcile_rate_limit_key",
    "timeline_entry",
    "vts_rate_limit_key",
]
