"""Applying VTS session events: each exactly once, in any order.

An event's contribution to the counters does not depend on the events around it (see
``service.vts.callbacks.ROLES`` and ``apply_event.lua``), so an event is applied the moment it
is processed: it never waits for an earlier one. It waits only while the create that
will tell us its session has not finished; after ``ORPHAN_AFTER`` it is kept aside.
Every value is checked before anything is written: an event with an impossible value
changes nothing and is counted as ``invalid``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import structlog

from service.errors import EventNotReady
from service.phones import InvalidNumber, normalise
from service.store import Applied, ApplyOutcome
from service.vts import callbacks
from service.vts.callbacks import Event, Role
from workers.dependencies import Dependencies

log = structlog.get_logger(__name__)

# How long an event may wait for its session's create to finish: longer than a create
# takes under retries, far shorter than a call.
ORPHAN_AFTER = timedelta(seconds=120)
RECONCILE_AFTER_CALL = timedelta(seconds=15)
RECONCILE_AFTER_END = timedelta(seconds=5)


# After which roles to compare with VTS, and how soon (ms): soon after a call, sooner
# after the end.
_RECONCILE_AFTER = {
    Role.TIMEOUT.value: RECONCILE_AFTER_END // timedelta(milliseconds=1),
    **{
        role.value: RECONCILE_AFTER_CALL // timedelta(milliseconds=1)
        for role in (Role.LEG_END, Role.LEG_COMPLETE, Role.PARTIES_HANGUP)
    },
}


def apply(deps: Dependencies, event_id: str, session_uuid: str | None = None) -> None:
    """Apply the stored callback ``event_id`` of VTS session ``session_uuid`` (messages
    queued before the web named it have to read the callback for it). Raises
    EventNotReady while it must wait."""
    if not session_uuid:
        stored = deps.events.webhook(event_id)
        if stored is None:
            log.warning("event_expired_before_applied", event_id=event_id)
            return
        session_uuid = stored[1]["SessionUUID"]
    applied = _apply(deps, event_id, session_uuid)
    if applied.outcome is ApplyOutcome.NEEDS:
        # Only Python can say: the virtual number's E.164 form, the event's own id.
        event = Event("session", json.loads(applied.detail))
        marker = _marker(event, event_id)
        applied = _apply(deps, event_id, session_uuid, marker=marker, virtual_number=_number(event))
    structlog.contextvars.bind_contextvars(
        vts_session_uuid=session_uuid,
        vts_event=applied.name,
        sequence=applied.sequence,
        **({"session_id": applied.session_id} if applied.session_id else {}),
    )
    _follow_up(deps, event_id, session_uuid, applied)


def _apply(deps: Dependencies, event_id: str, session_uuid: str, **answers: str) -> Applied:
    return deps.events.apply_event(
        event_id, session_uuid, clock=deps.clock(), reconcile_after=_RECONCILE_AFTER, **answers
    )


def _follow_up(deps: Dependencies, event_id: str, session_uuid: str, applied: Applied) -> None:
    if applied.outcome is ApplyOutcome.APPLIED:
        log.info("event_applied", status_before=applied.before, status_after=applied.after)
    elif applied.outcome in (ApplyOutcome.ERASED, ApplyOutcome.MISSING) or (
        applied.outcome is ApplyOutcome.NO_SESSION and deps.events.refuses_callbacks(session_uuid)
    ):
        # The session's data is gone or going: nothing of the event may outlive it.
        deps.events.drop_callback(event_id, session_uuid)
        log.info("event_dropped_session_gone", result=applied.outcome)
    elif applied.outcome is ApplyOutcome.NO_SESSION:
        received_ms = int(applied.detail)
        age = deps.clock() - datetime.fromtimestamp(received_ms / 1000, UTC)
        if age < ORPHAN_AFTER:
            raise EventNotReady("the session of this event is not known yet")
        deps.events.keep_orphan(event_id, received_ms, session_uuid)
        log.warning("event_orphaned")
    elif applied.outcome is ApplyOutcome.INVALID:
        deps.events.set_aside(event_id, session_uuid, "invalid")
        log.warning("event_invalid", reason=f"{applied.detail} is not a possible value")
    elif applied.outcome is ApplyOutcome.EXPIRED:
        log.warning("event_expired_before_applied")
    else:
        log.info("event_skipped", result=applied.outcome)


def _marker(event: Event, event_id: str) -> str:
    """What makes a redelivery of ``event``, stored as ``event_id``, a duplicate."""
    sequence = event.sequence
    return f"seq:{sequence}" if sequence is not None else f"id:{event_id}"


def _number(event: Event) -> str:
    """The new virtual number of a ``number`` event, E.164; "" when unreadable."""
    if callbacks.role_of(event.name) is not Role.NUMBER:
        return ""
    try:
        return normalise(event.params.get("VirtualNumber", ""))
    except InvalidNumber:
        log.warning("event_virtual_number_unreadable")
        return ""
