"""Reconciliation with VTS, and expiry when VTS's event never comes.

VTS's totals are authoritative for billing: when they differ from what the applied events
add up to, VTS wins, and every difference is logged and counted. A session whose
``expires_at`` has passed becomes ``expired`` even if VTS never said so.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import structlog

from service.errors import VtsNotFound
from service.models import LIVE, Session, Status, to_nanos
from service.store import Keys, timeline_entry
from service.vts.models import VtsSession
from workers.sessions import Context

log = structlog.get_logger(__name__)

RECONCILE_EVERY = timedelta(minutes=5)
EXPIRY_GRACE = timedelta(seconds=5)


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


def reconcile(ctx: Context, session_id: str, every: timedelta = RECONCILE_EVERY) -> None:
    """Compare the session with VTS's ``GET session``; VTS wins. Reschedules itself while
    the session lives."""
    session = ctx.store.get_session(session_id)
    if session is None or session.vts_session_uuid is None:
        ctx.store.unschedule("reconcile", session_id)
        return
    try:
        remote = ctx.vts.get_session(session.vts_session_uuid)
    except VtsNotFound:
        log.warning("reconcile_vts_session_unknown")
        ctx.store.unschedule("reconcile", session_id)
        return
    _settle(ctx, session, truth(remote))
    if remote.status == "expired" and session.status in LIVE:
        _expire(ctx, session_id, "vts_says_expired")
    elif session.status in LIVE:
        ctx.store.schedule("reconcile", session_id, ctx.clock() + every)
    else:
        ctx.store.unschedule("reconcile", session_id)


def _settle(ctx: Context, session: Session, totals: dict[str, int]) -> None:
    before = ctx.store.reconcile(session.id, totals)
    drift = {name: totals[name] - before[name] for name in totals if totals[name] != before[name]}
    if not drift:
        log.info("reconciled", drift=False)
        return
    ctx.store.count(Keys.reconcile_stats(), "sessions_with_drift")
    for name, difference in drift.items():
        ctx.store.count(Keys.reconcile_stats(), name, abs(difference))
    ctx.store.add_timeline(session.id, timeline_entry("reconciled", drift=drift))
    log.warning("reconciliation_drift", drift=drift)


def expire_if_due(ctx: Context, session_id: str) -> None:
    """Expire a live session whose ``expires_at`` has passed; otherwise check again then."""
    session = ctx.store.get_session(session_id)
    if session is None or session.status not in LIVE or session.expires_at is None:
        ctx.store.unschedule("expire", session_id)
        return
    if session.expires_at > ctx.clock():
        ctx.store.schedule("expire", session_id, session.expires_at + EXPIRY_GRACE)
        return
    ctx.store.unschedule("expire", session_id)
    _expire(ctx, session_id, "expiry_passed")


def _expire(ctx: Context, session_id: str, reason: str) -> None:
    result, _ = ctx.store.transition(
        session_id,
        Status.EXPIRED,
        allowed=list(LIVE),
        entry=timeline_entry("expired", reason=reason),
    )
    if result == "ok":
        log.info("session_expired", reason=reason)
        ctx.store.schedule("reconcile", session_id, ctx.clock() + timedelta(seconds=5))
