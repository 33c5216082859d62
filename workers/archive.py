"""Recording events: the recording is downloaded into our own storage, once.

``SessionRecordingCompleted`` registers the recording (``pending``) and fetches it,
streamed to storage through the download guard; duplicates of the event, and redelivered
messages, find it stored and do nothing. VTS may answer 404 for a while after the event:
that is retried until ``ready_within`` has passed since the event arrived. Network errors
and 5xx are retried by the actor's policy; a refusal (not allowed, too big, not audio) or
``SessionRecordingFailed`` marks the recording ``failed`` with the reason. Storage being
away (StorageUnavailable) is retried until ``storage_retry_for`` has passed since the
event arrived; only then, or on another storage error, is the recording failed, with a
reason that names storage, not VTS.
"""

from __future__ import annotations

from datetime import UTC, datetime

import structlog

from service.errors import (
    EventNotReady,
    RecordingNotReady,
    RecordingPending,
    RecordingRejected,
    StorageError,
    StorageUnavailable,
)
from service.metrics import metrics
from service.recordings import Recording, RecordingStatus, recording_id
from service.store import timeline_entry
from service.vts.callbacks import Event
from workers.accounting import ORPHAN_AFTER
from workers.dependencies import Dependencies
from workers.downloads import download

log = structlog.get_logger(__name__)


def apply(deps: Dependencies, event_id: str) -> None:
    """Handle one stored recording callback. Raises EventNotReady (retry) while its session
    is unknown or VTS still answers 404; RecordingUnavailable (retry) on network errors."""
    stored = deps.events.webhook(event_id)
    if stored is None:
        return
    _, params, received_ms = stored
    event = Event("recording", params)
    if deps.events.refuses_callbacks(event.session_uuid):
        # Erased or purged: nothing of the event may outlive the session's data.
        deps.events.drop_callback(event_id, event.session_uuid)
        log.info("event_dropped_session_gone")
        return
    received = datetime.fromtimestamp(received_ms / 1000, UTC)
    session_id = deps.sessions.session_for_vts(event.session_uuid)
    if session_id is None:
        if deps.clock() - received < ORPHAN_AFTER:
            raise EventNotReady("the session of this recording is not known yet")
        deps.events.keep_orphan(event_id, received_ms)
        return
    structlog.contextvars.bind_contextvars(session_id=session_id, vts_event=event.name)
    uuid = params.get("RecordingUUID", "")
    if not uuid:
        log.warning("recording_event_without_uuid")
        return
    if event.name == "SessionRecordingCompleted":
        _completed(deps, session_id, event, received)
    elif event.name == "SessionRecordingFailed":
        _register(deps, session_id, event)
        fail(deps, recording_id(uuid), "VTS could not record the call")
    else:
        _note(deps, session_id, event, uuid)


def _note(deps: Dependencies, session_id: str, event: Event, uuid: str) -> None:
    if deps.events.mark_applied(session_id, f"recording:{event.name}:{uuid}"):
        entry = timeline_entry("recording", name=event.name, recording_id=recording_id(uuid))
        deps.sessions.add_timeline(session_id, entry)


def _register(deps: Dependencies, session_id: str, event: Event) -> Recording | None:
    try:
        return deps.recordings.upsert_pending(
            session_id,
            event.params["RecordingUUID"],
            event.params.get("RecordingFormat") or "mp3",
            event.integer("RecordingDuration") or None,
        )
    except ValueError:
        log.warning("recording_format_unknown")
        return None


def _completed(deps: Dependencies, session_id: str, event: Event, received: datetime) -> None:
    recording = _register(deps, session_id, event)
    if recording is None or recording.status is RecordingStatus.STORED:
        return
    url = event.params.get("RecordingURL", "")
    try:
        result = download(
            url,
            dest_name=recording.stored_name,
            storage=deps.storage,
            client=deps.downloads,
            policy=deps.download_policy,
            auth=deps.vts_auth,
        )
    except RecordingNotReady as exc:
        if deps.clock() - received < deps.recording_ready_within:
            raise RecordingPending("VTS does not serve the recording yet") from exc
        fail(deps, recording.id, f"not available within {deps.recording_ready_within.seconds} s")
        return
    except RecordingRejected as exc:
        fail(deps, recording.id, str(exc))
        return
    except StorageUnavailable:
        if deps.clock() - received < deps.storage_retry_for:
            raise
        limit = int(deps.storage_retry_for.total_seconds())
        fail(deps, recording.id, f"recording storage was unavailable for more than {limit} s")
        return
    except StorageError as exc:
        fail(deps, recording.id, f"recording storage refused the recording ({exc.reason})")
        return
    _stored(deps, recording, result.size, result.sha256, result.content_type)


def _stored(deps: Dependencies, recording: Recording, size: int, sha256: str, kind: str) -> None:
    if not deps.recordings.mark_stored(recording.id, size=size, sha256=sha256, content_type=kind):
        # Deleted, erased or purged while it downloaded: the file must not outlive it.
        deps.storage.delete(recording.stored_name)
        log.info("recording_discarded", recording_id=recording.id)
        return
    metrics().recordings.labels("stored").inc()
    metrics().recording_bytes.inc(size)
    log.info("recording_stored", recording_id=recording.id, size=size)


def give_up(deps: Dependencies, event_id: str) -> None:
    """Retries are exhausted for this event: its recording, if any, has failed."""
    stored = deps.events.webhook(event_id)
    uuid = stored[1].get("RecordingUUID") if stored else None
    if uuid:
        fail(deps, recording_id(uuid), "VTS kept failing to serve the recording")


def fail(deps: Dependencies, rec_id: str, reason: str) -> None:
    """Mark the recording failed (a stored one stays stored) and say so on the timeline."""
    recording = deps.recordings.get(rec_id)
    if recording is None or not deps.recordings.mark_failed(rec_id, reason):
        return
    metrics().recordings.labels("failed").inc()
    entry = timeline_entry("recording_failed", recording_id=rec_id, reason=reason)
    deps.sessions.add_timeline(recording.session_id, entry)
    log.warning("recording_failed", recording_id=rec_id, reason=reason)
