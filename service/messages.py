"""The message contract between the web and the workers.

The web enqueues by actor name through this module; the workers declare actors with the
same names and queues (a test checks both sides agree). Messages carry ids, never phone
numbers: an actor reads what it needs from the store. The request id rides in the message
options so that every worker log line can be tied to the HTTP request that caused it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

SESSIONS_QUEUE = "sessions"
EVENTS_QUEUE = "events"
RECORDINGS_QUEUE = "recordings"
NOTIFICATIONS_QUEUE = "notifications"


@dataclass(frozen=True)
class ActorRoute:
    actor_name: str
    queue_name: str


CREATE_SESSION = ActorRoute("create_session", SESSIONS_QUEUE)
UPDATE_SESSION = ActorRoute("update_session", SESSIONS_QUEUE)
EXPIRE_SESSION = ActorRoute("expire_session", SESSIONS_QUEUE)

APPLY_EVENT = ActorRoute("apply_event", EVENTS_QUEUE)
APPLY_RECORDING_EVENT = ActorRoute("apply_recording_event", RECORDINGS_QUEUE)
NOTIFY_APP = ActorRoute("notify_app", NOTIFICATIONS_QUEUE)
DELETE_RECORDING_FILES = ActorRoute("delete_recording_files", RECORDINGS_QUEUE)

ROUTES = (
    CREATE_SESSION,
    UPDATE_SESSION,
    EXPIRE_SESSION,
    APPLY_EVENT,
    APPLY_RECORDING_EVENT,
    NOTIFY_APP,
    DELETE_RECORDING_FILES,
)


# Set in the options of a dead letter put back by an operator: work given up before may
# be taken up again (a create whose retries ran out).
REPLAY_OPTION = "replay"


@dataclass(frozen=True)
class Outgoing:
    """A message encoded in dramatiq's wire format, ready for the store to enqueue."""

    queue_name: str
    message_id: str
    redis_message_id: str
    payload: bytes


def build(
    route: ActorRoute,
    *args: Any,
    request_id: str | None = None,
    app: str | None = None,
    **kwargs: Any,
) -> Outgoing:
    """``request_id`` and ``app`` (the name of the app that asked) ride in the options, for
    the worker's log lines."""
    # One uuid4 serves as both ids: each only has to be unique, and a uuid4 costs ~2 µs.
    message_id = str(uuid4())
    options: dict[str, Any] = {"redis_message_id": message_id}
    if request_id is not None:
        options["request_id"] = request_id
    if app is not None:
        options["app"] = app
    # dramatiq's wire format (what ``dramatiq.Message(...).encode()`` writes with its
    # default JSON encoder, field for field), without building the dataclass to encode it.
    fields = {
        "queue_name": route.queue_name,
        "actor_name": route.actor_name,
        "args": args,
        "kwargs": kwargs,
        "options": options,
        "message_id": message_id,
        "message_timestamp": int(time.time() * 1000),
    }
    return Outgoing(route.queue_name, message_id, message_id, _encode(fields).encode())


_encode = json.JSONEncoder(separators=(",", ":")).encode
