"""Reconciliation with VTS, and expiry when VTS's event never comes.

VTS's totals are authoritative for billing: when they differ from what the applied events
add up to, VTS wins, and every difference is logged and counted. A session whose
``expires_at`` has passed becomes ``expired`` even if VTS never said so.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime, timedelta
from decimal import Decimal

import structlog

from service.errors import VtsNotFound
from service.models import LIVE, Session, Status, to_nanos
from service.store import Outcome, timeline_entry
from service.vts.models import VtsSession
from workers.dependencies import Dependencies
from workers.sessions import EXPIRY_GRACE, locked, mark_expired

log = structlog.get_logger(__name__)

# Callbacks stored longer ago than this and still not applied are not on their way: they
# were lost with a crashed worker's message or dead-lettered. They no longer hold up a
# correction (a replay applies them later, on top of it).
IN_FLIGHT_PATIENCE = timedelta(minutes=5)


def truth(vts: VtsSession) -> dict[str, int]:
    """VTS's totals, in our counters' terms. An interaction is a call in which both
    parties answered (the same definition the events follow)."""
    bridged = [
        i
        for i in vts.interactions or ()
        if i.first_party_status == "completed" and i.second_party_status == "completed"
    ]
    return {
        "interaction_count": len(bridged),
        "call_count": vts.total_call_count or 0,
        "billed_duration": vts.total_call_billed_duration or 0,
        "call_amount_nanos": to_nanos(vts.total_call_amount or Decimal(0)),
    }


def reconcile(deps: Dependencies, session_id: str) -> None:
    """Compare the session with VTS's ``GET session``; VTS wins. Reschedules itself while
    the session lives.

    A difference is acted on only once it has held still for ``deps.reconcile_settle``:
    events still on their way (VTS counts a call before its callbacks reach us) are not drift.
    """
    session = deps.sessions.get_session(session_id)
    if session is None or session.vts_session_uuid is None:
        deps.schedule.unschedule("reconcile", session_id)
        return
    with _budget(deps) as wait:
        if wait:
            # Over reconciliation's share of the VTS rate: try again once a slot frees.
            deps.schedule.schedule("reconcile", session_id, deps.clock() + timedelta(seconds=wait))
            log.info("reconcile_deferred", wait_seconds=round(wait, 2))
            return
        with locked(deps, session_id):
            try:
                remote = deps.vts.get_session(session.vts_session_uuid)
            except VtsNotFound:
                log.warning("reconcile_vts_session_unknown")
                deps.schedule.unschedule("reconcile", session_id)
                return
            settled = _settle(deps, session, truth(remote), _last_call_end(remote))
    if remote.status == "expired" and session.status in LIVE:
        _expire(deps, session_id, "vts_says_expired")
        return
    if settled and _call_ended_unheard(session, remote):
        _end_call(deps, session_id)
    if not settled:
        deps.schedule.schedule("reconcile", session_id, deps.clock() + deps.reconcile_settle)
    elif session.status in LIVE:
        deps.schedule.schedule("reconcile", session_id, deps.clock() + deps.reconcile_every)
    else:
        deps.schedule.unschedule("reconcile", session_id)


def _budget(deps: Dependencies) -> AbstractContextManager[float]:
    """A slot of reconciliation's share of the VTS rate, or the seconds until one frees."""
    if deps.reconcile_budget is None:
        return nullcontext(0.0)
    return deps.reconcile_budget.slot_now()


def _shown(session: Session) -> dict[str, int]:
    return {
        "interaction_count": session.interaction_count,
        "call_count": session.call_count,
        "billed_duration": session.billed_duration,
        "call_amount_nanos": to_nanos(session.call_amount),
    }


def _last_call_end(remote: VtsSession) -> datetime | None:
    ends = [i.end_time for i in remote.interactions or () if i.end_time is not None]
    if remote.last_interaction_time is not None:
        ends.append(remote.last_interaction_time)
    return max(ends, default=None)


def _settle(
    deps: Dependencies, session: Session, totals: dict[str, int], last_call_end: datetime | None
) -> bool:
    """Return True when our counters agree with VTS (now, or after correcting them)."""
    shown = _shown(session)
    if shown == totals:
        deps.sessions.note_unsettled(session.id, None)
        log.info("reconciled", drift=False)
        return True
    snapshot = json.dumps([totals, shown], sort_keys=True)
    since = deps.clock() - IN_FLIGHT_PATIENCE
    waiting = deps.events.events_in_flight(session.vts_session_uuid or "", since)
    # VTS counts a call when it ends and sends its callbacks after: until the settle time
    # has passed since VTS's last call ended, the difference may be those callbacks.
    recent = last_call_end is not None and deps.clock() - last_call_end < deps.reconcile_settle
    if deps.sessions.note_unsettled(session.id, snapshot) != snapshot or waiting or recent:
        # Callbacks stored recently but not applied yet (a backlog, a worker restarting)
        # are not drift: wait for them, up to IN_FLIGHT_PATIENCE.
        log.info("reconcile_unsettled", events_in_flight=waiting, call_just_ended=recent)
        return False
    before = deps.sessions.reconcile(session.id, totals)
    drift = {name: totals[name] - before[name] for name in totals if totals[name] != before[name]}
    deps.sessions.note_unsettled(session.id, None)
    deps.sessions.count_drift("sessions_with_drift")
    for name, difference in drift.items():
        deps.sessions.count_drift(name, abs(difference))
    deps.sessions.add_timeline(session.id, timeline_entry("reconciled", drift=drift))
    log.warning("reconciliation_drift", drift=drift)
    return True


def expire_if_due(deps: Dependencies, session_id: str) -> None:
    """Expire a live session whose ``expires_at`` has passed; otherwise check again then."""
    session = deps.sessions.get_session(session_id)
    if session is None or session.status not in LIVE or session.expires_at is None:
        deps.schedule.unschedule("expire", session_id)
        return
    if session.expires_at > deps.clock():
        deps.schedule.schedule("expire", session_id, session.expires_at + EXPIRY_GRACE)
        return
    deps.schedule.unschedule("expire", session_id)
    _expire(deps, session_id, "expiry_passed")


def _expire(deps: Dependencies, session_id: str, reason: str) -> None:
    # VTS's final totals are read once it has had time to send them.
    reconcile = ("reconcile", deps.clock() + EXPIRY_GRACE)
    mark_expired(deps, session_id, reason=reason, timers=[reconcile])


def _call_ended_unheard(session: Session, remote: VtsSession) -> bool:
    """Whether VTS has ended the call our session still shows in progress: its hangup
    callback never reached us (refused while Redis was away, lost upstream)."""
    if session.status is not Status.IN_PROGRESS:
        return False
    ended = _last_call_end(remote)
    last_seen = session.last_interaction_at
    return ended is not None and (last_seen is None or ended >= last_seen)


def _end_call(deps: Dependencies, session_id: str) -> None:
    """Set the status the missed hangup would have set."""
    result, _ = deps.sessions.transition(
        session_id,
        Status.ACTIVE,
        allowed=[Status.IN_PROGRESS],
        entry=timeline_entry("call_ended", reason="vts_reports_call_ended"),
    )
    if result is Outcome.OK:
        log.warning("session_call_end_reconciled")
