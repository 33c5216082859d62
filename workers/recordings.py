"""Recording callbacks: noted on the session's timeline once its session is known.

Downloading the media into our own storage is not built yet; the events are kept (in
Redis, with the raw callback) so that it can be done for them later.
"""

from __future__ import annotations

from datetime import UTC, datetime

import structlog

from service.events import Event
from service.store import Keys, timeline_entry
from workers.events import ORPHAN_AFTER, Context, EventNotReady

log = structlog.get_logger(__name__)

_FIELDS = {
    "RecordingUUID": "recording_uuid",
    "RecordingFormat": "format",
    "RecordingDuration": "duration",
}


def note(ctx: Context, event_id: str) -> None:
    """Add the recording event to its session's timeline, once (by its event id)."""
    stored = ctx.store.webhook(event_id)
    if stored is None:
        return
    _, params, received_ms = stored
    event = Event("recording", params)
    session_id = ctx.store.session_for_vts(event.session_uuid)
    if session_id is None:
        age = ctx.clock() - datetime.fromtimestamp(received_ms / 1000, UTC)
        if age < ORPHAN_AFTER:
            raise EventNotReady("the session of this recording is not known yet")
        ctx.store.keep_orphan(event_id, received_ms)
        return
    if not ctx.store.mark_once(Keys.applied(session_id), f"id:{event_id}"):
        return
    details = {name: params[field] for field, name in _FIELDS.items() if field in params}
    ctx.store.add_timeline(session_id, timeline_entry("recording", name=event.name, **details))
    log.info("recording_event_noted", vts_event=event.name, session_id=session_id)
