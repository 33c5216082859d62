"""Applying VTS session events: exactly once, in ``SequenceNumber`` order per session.

An event waits (is retried) while the create that will tell us its session has not
finished, and while the session's previous event has not been applied: 10 s for one that
has not reached us, 5 minutes for one that has (it is on its way through a backlog or a
restarting worker). After that an unknown session's event is kept aside and an
out-of-order event is applied anyway (reconciliation settles what was missed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog

from service import events
from service.errors import ServiceError
from service.events import Event
from service.models import iso, to_nanos
from service.phones import InvalidNumber, normalise
from service.store import EventChange, Store, timeline_entry
from workers import notifications

log = structlog.get_logger(__name__)

# How long an event may wait for its session's create to finish, or for the event before
# it; longer than a create takes under retries, far shorter than a call.
ORPHAN_AFTER = timedelta(seconds=120)
HOLD_AT_MOST = timedelta(seconds=10)
# An earlier event that has reached us is waited for longer (it is being processed, or
# its worker is being replaced), but not forever: it may be failing for good.
GIVE_UP_WAITING = timedelta(minutes=5)
RECONCILE_AFTER_CALL = timedelta(seconds=15)
RECONCILE_AFTER_END = timedelta(seconds=5)


class EventNotReady(ServiceError):
    """The event must wait (its session is not known yet, or an earlier event is missing)."""


@dataclass(frozen=True)
class Context:
    store: Store
    clock: Callable[[], datetime]


def apply(ctx: Context, event_id: str, session_uuid: str | None = None) -> None:
    """Apply the stored callback ``event_id`` (of VTS session ``session_uuid``, when the
    message names it: one round trip less). Raises EventNotReady while it must wait."""
    if session_uuid:
        stored, session_id = ctx.store.webhook_and_session(event_id, session_uuid)
    else:
        stored = ctx.store.webhook(event_id)
        session_id = ctx.store.session_for_vts(stored[1]["SessionUUID"]) if stored else None
    if stored is None:
        log.warning("event_expired_before_applied", event_id=event_id)
        return
    _, params, received_ms = stored
    event = Event("session", params)
    age = ctx.clock() - datetime.fromtimestamp(received_ms / 1000, UTC)
    structlog.contextvars.bind_contextvars(
        vts_session_uuid=event.session_uuid, vts_event=event.name, sequence=event.sequence
    )
    if session_id is None:
        if age < ORPHAN_AFTER:
            raise EventNotReady("the session of this event is not known yet")
        ctx.store.keep_orphan(event_id, received_ms)
        log.warning("event_orphaned", event_id=event_id)
        return
    structlog.contextvars.bind_contextvars(session_id=session_id)
    planned = change(event, force=_force(age), now=ctx.clock())
    result = ctx.store.apply_event(session_id, planned)
    if result == "hold":
        raise EventNotReady("an earlier event of this session has not arrived yet")
    _after(ctx, session_id, event, result)


def _force(age: timedelta) -> int:
    """How hard to push past a missing previous event (see the store's apply script)."""
    if age >= GIVE_UP_WAITING:
        return 2
    return 1 if age >= HOLD_AT_MOST else 0


def _after(ctx: Context, session_id: str, event: Event, result: str) -> None:
    if not result.startswith("applied"):
        log.info("event_skipped", result=result)
        return
    _, before, after, interaction, wants_news = result.split(":")
    log.info("event_applied", status_before=before, status_after=after)
    if wants_news != "1":
        return
    if after == "expired" and before != "expired":
        _notify(ctx, session_id, "session.expired")
    if interaction == "1":
        _notify(ctx, session_id, "session.call_ended", tag=str(event.sequence or event.id))


def _notify(ctx: Context, session_id: str, kind: str, tag: str = "") -> None:
    session = ctx.store.get_session(session_id)
    if session is not None:
        notifications.queue(ctx.store, session, kind, tag)


def _party(name: str) -> str:
    if "FirstParty" in name:
        return "first"
    return "second" if "SecondParty" in name else ""


def _role(name: str) -> str:
    if name in events.COMPLETE_FAMILY_ENDS:
        return "leg_end_complete"
    if name in events.LEG_ENDS:
        return "leg_end"
    if name in ("SessionFirstPartyAnswer", "SessionSecondPartyAnswer"):
        return "answer"
    if name == events.PARTIES_HANGUP:
        return "parties_hangup"
    if name == events.TIMEOUT:
        return "timeout"
    if name == events.NUMBER_REPLACED:
        return "number"
    if name == "SessionVirtualNumberAnswer":
        return "call"
    return "leg" if name in events.CALL_EVENTS else "other"


def _reconcile_at(role: str, now: datetime) -> datetime | None:
    """When to compare with VTS after this event: soon after a call, sooner after the end."""
    if role == "timeout":
        return now + RECONCILE_AFTER_END
    if role.startswith("leg_end") or role == "parties_hangup":
        return now + RECONCILE_AFTER_CALL
    return None


def change(event: Event, *, force: int, now: datetime) -> EventChange:
    """What ``event`` does, in the terms of the store's apply script."""
    role = _role(event.name)
    ends_leg = role.startswith("leg_end")
    sequence = event.sequence
    return EventChange(
        marker=f"seq:{sequence}" if sequence is not None else f"id:{event.id}",
        previous_marker=f"seq:{sequence - 1}" if sequence and sequence > 1 else None,
        force=force,
        role=role,
        party=_party(event.name),
        billed=event.integer("BilledDuration") if ends_leg else 0,
        amount_nanos=to_nanos(event.decimal("Amount")) if ends_leg else 0,
        at=_event_time(event),
        entry=_timeline(event),
        session_uuid=event.session_uuid,
        previous_sequence=str(sequence - 1) if sequence and sequence > 1 else None,
        virtual_number=_virtual_number(event) if role == "number" else None,
        reconcile_at=_reconcile_at(role, now),
    )


def _event_time(event: Event) -> str:
    raw = event.params.get("EventTimestamp", "").strip()
    try:
        moment = datetime.fromisoformat(raw).replace(tzinfo=UTC)
    except ValueError:
        moment = datetime.now(UTC)
    return iso(moment) or ""


def _virtual_number(event: Event) -> str | None:
    try:
        return normalise(event.params.get("VirtualNumber", ""))
    except InvalidNumber:
        log.warning("event_virtual_number_unreadable")
        return None


_TIMELINE_FIELDS = {
    "Duration": "duration",
    "BilledDuration": "billed_duration",
    "Amount": "amount",
    "HangupCause": "hangup_cause",
    "HangupCauseCode": "hangup_cause_code",
}


def _timeline(event: Event) -> str:
    """The event as the timeline shows it: normalised fields, never a phone number."""
    details = {
        name: event.params[field]
        for field, name in _TIMELINE_FIELDS.items()
        if field in event.params
    }
    return timeline_entry(
        "vts_event",
        name=event.name,
        sequence=event.sequence,
        event_time=_event_time(event),
        **details,
    )
