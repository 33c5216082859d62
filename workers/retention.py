"""Data lifecycle: ended sessions purged after the retention, recordings' files deleted.

Ending a session schedules its purge ``SESSION_RETENTION`` later (the store does it in
the same write); the scheduler then runs :func:`purge`. Files go first and the records
after, so a purge cut short leaves records that point at what is left, and runs again
(its timer stays due until the records are gone).
"""

from __future__ import annotations

import structlog

from service.models import FINAL
from service.recordings import RecordingStatus
from workers.dependencies import Dependencies

log = structlog.get_logger(__name__)


def purge(deps: Dependencies, session_id: str) -> None:
    """Delete an ended session, its records and its recordings' files. Idempotent."""
    session = deps.sessions.get_session(session_id)
    if session is not None and session.status not in FINAL:
        deps.schedule.unschedule("purge", session_id)
        log.warning("purge_of_live_session_skipped", session_id=session_id)
        return
    recordings = deps.recordings.for_session(session_id)
    for recording in recordings:
        deps.storage.delete(recording.stored_name)
    deps.retention.purge_session(session_id, [r.id for r in recordings])
    log.info("session_purged", session_id=session_id, recordings=len(recordings))


def delete_files(deps: Dependencies, session_id: str) -> None:
    """Delete the files of the session's recordings marked deleted (by the app, or by an
    erasure). Idempotent."""
    deleted = [
        r for r in deps.recordings.for_session(session_id) if r.status is RecordingStatus.DELETED
    ]
    for recording in deleted:
        deps.storage.delete(recording.stored_name)
    log.info("recording_files_deleted", session_id=session_id, recordings=len(deleted))
