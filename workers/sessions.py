"""Session work at VTS: create, update, expire. Plain functions; the actors call them.

Every function is idempotent: it reads the session's state first, takes the session's
lock so only one VTS call at a time acts on a session, and does nothing when the work is
already done. Retryable failures are raised (the actor's retry policy handles them);
rejections are recorded on the session.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from service.errors import (
    SessionBusy,
    SessionNotReady,
    VtsNotFound,
    VtsOutcomeUnknown,
    VtsRejected,
    VtsUnavailable,
)
from service.models import FINAL, LIVE, NotificationKind, Session, Status, iso
from service.phones import mask_text
from service.store import Outcome, Sessions, timeline_entry
from service.vts.models import VtsSession
from workers import leases
from workers.dependencies import Dependencies

log = structlog.get_logger(__name__)

# After a session's expiry time, how long VTS has to tell us before we expire it ourselves.
EXPIRY_GRACE = timedelta(seconds=5)
# How far before our first attempt a VTS session may have been stamped and still be the
# one that attempt created (clock skew between us and VTS, queueing at VTS).
LOOKUP_SLACK = timedelta(seconds=60)


# Answers after which VTS has certainly not created anything: refused before sending
# (None), no virtual number free (400, retried: see VtsNoNumberAvailable), rate limited,
# or unavailable. A 500, 502 or 504 may come after the work was done.
_NOT_ACTED_ON = frozenset({None, 400, 429, 503})


def locked(deps: Dependencies, session_id: str) -> AbstractContextManager[str]:
    """Hold the session's lease (see :mod:`workers.leases`); yields the fence token."""
    return leases.held(deps.sessions, session_id, deps.lock_lease)


# The code a create given up after its retries leaves; only such a session is created
# again when its dead letter is replayed (a VTS rejection is final).
GAVE_UP = "create_failed"


def create(deps: Dependencies, session_id: str, replay: bool = False) -> None:
    """Create the session at VTS, exactly once per session.

    An earlier attempt whose outcome is unknown (sent, but no answer; or the worker died)
    is resolved first by looking the session up at VTS (same parties, created since that
    attempt began) and adopting it. A ``replay`` (an operator put the dead letter back)
    also takes up a session whose create was given up; it leaves ``failed`` only once
    VTS has the session.
    Raises VtsUnavailable (retry) or SessionBusy (retry).
    """
    session = deps.sessions.get_session(session_id)
    if session is None or Status(session.status) not in _creatable(session, replay=replay):
        return
    with locked(deps, session_id) as fence:
        uncertain_since = deps.sessions.open_create_attempt(session_id, deps.clock())
        # The attempt must outlive a failover before VTS acts on it: a redelivered create
        # that finds it adopts the VTS session this one makes instead of making another.
        deps.replicas.wait()
        if uncertain_since is not None and _adopt_existing(deps, session, uncertain_since, fence):
            return
        try:
            created = deps.vts.create_session(vts_create_params(session, deps.public_base_url))
        except VtsOutcomeUnknown:
            log.warning("vts_create_outcome_unknown")
            raise
        except VtsUnavailable as exc:
            if exc.status in _NOT_ACTED_ON:
                deps.sessions.close_create_attempt(session_id)
            raise
        except VtsRejected as exc:
            fail(deps.sessions, session_id, "vts_rejected", exc.reason, fence=fence)
            return
        _activate(deps, session, created, adopted=False, fence=fence)


def _creatable(session: Session, *, replay: bool) -> list[Status]:
    """The statuses from which this create may make the session active."""
    if replay and session.status is Status.FAILED and session.error_code == GAVE_UP:
        return [Status.PENDING, Status.FAILED]
    return [Status.PENDING]


def _adopt_existing(deps: Dependencies, session: Session, since: datetime, fence: str) -> bool:
    candidates = deps.vts.list_sessions(
        first_party=session.first_party,
        second_party=session.second_party,
        created_since=since - LOOKUP_SLACK,
    )
    for candidate in sorted(candidates, key=_created_or_min):
        if deps.sessions.claim_vts_session(candidate.session_uuid, session.id) == session.id:
            _activate(deps, session, candidate, adopted=True, fence=fence)
            return True
    log.info("vts_session_lookup_found_none", candidates=len(candidates))
    return False


def _created_or_min(candidate: VtsSession) -> datetime:
    return candidate.created_time or datetime.min.replace(tzinfo=UTC)


def _activate(
    deps: Dependencies, session: Session, created: VtsSession, *, adopted: bool, fence: str
) -> None:
    """Store what VTS created. Its claim is written first, so that if storing fails (Redis
    away, the lease lost) the next attempt adopts this VTS session rather than make
    another. Raises SessionBusy when the lease has passed to another worker."""
    owner = deps.sessions.claim_vts_session(created.session_uuid, session.id)
    if owner != session.id:
        log.error("vts_session_claimed_by_another", other_session_id=owner)
    expires_at = created.expiry_time or _expiry(deps, session)
    fields = {
        "vts_session_uuid": created.session_uuid,
        "virtual_number": created.virtual_number or "",
        "expires_at": iso(expires_at) or "",
    }
    entry = timeline_entry("created", vts_session_uuid=created.session_uuid, adopted=adopted)
    if session.status is Status.FAILED:
        fields |= {"error_code": "", "error_message": ""}
    allowed = (
        [Status.PENDING, Status.FAILED] if session.status is Status.FAILED else [Status.PENDING]
    )
    result, _ = deps.sessions.transition(
        session.id,
        Status.ACTIVE,
        allowed=allowed,
        fields=fields,
        entry=entry,
        fence=fence,
        timers=[
            ("expire", expires_at + EXPIRY_GRACE),
            ("reconcile", deps.clock() + deps.reconcile_every),
        ],
        notify=(NotificationKind.ACTIVE, ""),
    )
    if result is Outcome.FENCED:
        raise SessionBusy("the session's lease passed to another worker")
    structlog.contextvars.bind_contextvars(vts_session_uuid=created.session_uuid)
    log.info("session_created", adopted=adopted, result=result.value)


def _expiry(deps: Dependencies, session: Session) -> datetime:
    seconds = int(session.options.get("session_expiry") or 3600)
    return deps.clock() + timedelta(seconds=seconds)


def fail(
    sessions: Sessions, session_id: str, code: str, message: str, *, fence: str | None = None
) -> None:
    """Mark a pending session failed with a reason safe to show (numbers masked)."""
    reason = mask_text(message)[:500]
    entry = timeline_entry("failed", code=code, message=reason)
    result, _ = sessions.transition(
        session_id,
        Status.FAILED,
        allowed=[Status.PENDING],
        fields={"error_code": code, "error_message": reason},
        entry=entry,
        fence=fence,
        notify=(NotificationKind.FAILED, ""),
    )
    if result is Outcome.FENCED:
        raise SessionBusy("the session's lease passed to another worker")
    log.warning("session_failed", code=code, reason=reason)


def update(deps: Dependencies, session_id: str) -> None:
    """Send every change asked for the session and not yet sent (the web merges them, last
    writer wins per field) to VTS in one update; changes asked meanwhile go in a follow-up
    ``update_interval`` later. Raises SessionNotReady while pending.
    """
    session = _live_session(deps, session_id)
    if session is None or session.vts_session_uuid is None:
        _finish_update(deps, session_id)
        return
    vts_session_uuid = session.vts_session_uuid
    with locked(deps, session_id) as fence:
        # Read again under the lock: an update that just finished may have changed options.
        session = deps.sessions.get_session(session_id) or session
        app, pending = deps.sessions.pending_update(session_id)
        if app:
            structlog.contextvars.bind_contextvars(app=app)
        wanted = {k: json.loads(v) for k, v in pending.items()}
        if wanted:
            _send_update(deps, session, vts_session_uuid, wanted, fence)
        interval = deps.update_interval if wanted else 0.0
        deps.sessions.finish_update(
            session_id, app, pending, interval=interval, window=deps.budget_window
        )


def give_up_update(deps: Dependencies, session_id: str) -> None:
    """Drop the changes that could not be sent to VTS (retries exhausted), so that the next
    change asked starts an update of its own rather than waiting on this one."""
    _, pending = deps.sessions.pending_update(session_id)
    deps.sessions.add_timeline(session_id, timeline_entry("update_failed", changes=sorted(pending)))
    log.warning("session_update_given_up", changes=sorted(pending))
    _finish_update(deps, session_id)


def _finish_update(deps: Dependencies, session_id: str) -> None:
    """Drop what is pending, unsent (the session can no longer be updated, or the update
    was given up)."""
    app, pending = deps.sessions.pending_update(session_id)
    deps.sessions.finish_update(session_id, app, pending, interval=0.0, window=deps.budget_window)


def _send_update(
    deps: Dependencies,
    session: Session,
    vts_session_uuid: str,
    changes: Mapping[str, Any],
    fence: str,
) -> None:
    try:
        updated = deps.vts.update_session(vts_session_uuid, changes)
    except VtsNotFound:
        mark_expired(deps, session.id, reason="vts_unknown_session", fence=fence)
        return
    except VtsRejected as exc:
        deps.sessions.add_timeline(
            session.id, timeline_entry("update_rejected", message=mask_text(exc.reason))
        )
        log.warning("session_update_rejected", reason=mask_text(exc.reason))
        return
    options = {**session.options, **changes}
    fields = {"options": _json(options)}
    if "session_expiry" in changes:
        expiry = updated.expiry_time if updated else None
        fields["expires_at"] = (
            iso(expiry or _expiry(deps, session.with_changes(options=options))) or ""
        )
    deps.sessions.transition(
        session.id,
        None,
        allowed=list(LIVE),
        fields=fields,
        entry=timeline_entry("updated", changes=sorted(changes)),
        fence=fence,
    )
    log.info("session_updated", changes=sorted(changes))


def expire(deps: Dependencies, session_id: str) -> None:
    """End the session at VTS now. Raises SessionNotReady while the create is running."""
    session = _live_session(deps, session_id)
    if session is None or session.vts_session_uuid is None:
        return
    with locked(deps, session_id) as fence:
        try:
            deps.vts.expire_session(session.vts_session_uuid)
        except VtsNotFound:
            log.info("vts_session_already_gone")
        # VTS's final totals are read once it has had time to send them.
        reconcile = ("reconcile", deps.clock() + EXPIRY_GRACE)
        mark_expired(deps, session_id, reason="ended_by_app", fence=fence, timers=[reconcile])


def _live_session(deps: Dependencies, session_id: str) -> Session | None:
    session = deps.sessions.get_session(session_id)
    if session is None or session.status in FINAL:
        return None
    if session.status is Status.PENDING:
        raise SessionNotReady("the session is still being created")
    return session


def mark_expired(
    deps: Dependencies,
    session_id: str,
    *,
    reason: str,
    fence: str | None = None,
    timers: Sequence[tuple[str, datetime]] = (),
) -> None:
    """Move a live session to ``expired`` with the app's notification and ``timers``, in
    one write; a session no longer live is left as it is. Raises SessionBusy when
    ``fence`` is no longer the session's lease. Every way a session is expired here
    (the app's DELETE, its expiry time, reconciliation) goes through this."""
    result, _ = deps.sessions.transition(
        session_id,
        Status.EXPIRED,
        allowed=list(LIVE),
        entry=timeline_entry("expired", reason=reason),
        fence=fence,
        timers=timers,
        notify=(NotificationKind.EXPIRED, ""),
    )
    if result is Outcome.FENCED:
        raise SessionBusy("the session's lease passed to another worker")
    if result is Outcome.OK:
        log.info("session_expired", reason=reason)


def vts_create_params(session: Session, public_base_url: str) -> dict[str, Any]:
    """VTS's create body: the parties, the app's options, and our own callback URLs."""
    options = {k: v for k, v in session.options.items() if v is not None}
    return {
        "first_party": session.first_party,
        "second_party": session.second_party,
        **options,
        "callback_url": f"{public_base_url}/webhooks/vts/session",
        "callback_method": "POST",
        "recording_callback_url": f"{public_base_url}/webhooks/vts/recording",
        "recording_callback_method": "POST",
    }


def _json(value: Mapping[str, Any]) -> str:
    return json.dumps(dict(value), separators=(",", ":"))
