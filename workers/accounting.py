"""Applying VTS session events: each exactly once, in any order.

An event's contribution to the counters does not depend on the events around it (see
``service.vts.callbacks.ROLES`` and ``apply_event.lua``), so an event is applied the moment it
is processed: it never waits for an earlier one. It waits only while the create that
will tell us its session has not finished; after ``ORPHAN_AFTER`` it is kept aside.
Every value is checked before anything is written: an event with an impossible value
changes nothing and is counted as ``invalid``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation

import structlog

from service.errors import ServiceError
from service.models import iso, to_nanos
from service.phones import InvalidNumber, normalise
from service.store import Applied, EventChange, Store, timeline_entry
from service.vts import callbacks
from service.vts.callbacks import Event, InvalidEvent, Role
from workers import notifications

log = structlog.get_logger(__name__)

# How long an event may wait for its session's create to finish: longer than a create
# takes under retries, far shorter than a call.
ORPHAN_AFTER = timedelta(seconds=120)
RECONCILE_AFTER_CALL = timedelta(seconds=15)
RECONCILE_AFTER_END = timedelta(seconds=5)
# Bounds of one leg's values: a day of talk, and more money than a day of talk costs.
MAX_BILLED_SECONDS = 86_400
MAX_AMOUNT = Decimal(1000)


class EventNotReady(ServiceError):
    """The event must wait (its session is not known yet)."""


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
        ctx.store.keep_orphan(event_id, received_ms, event.session_uuid)
        log.warning("event_orphaned", event_id=event_id)
        return
    structlog.contextvars.bind_contextvars(session_id=session_id)
    try:
        planned = change(event, event_id=event_id, now=ctx.clock())
    except InvalidEvent as exc:
        ctx.store.set_aside(event_id, event.session_uuid, "invalid")
        log.warning("event_invalid", reason=str(exc))
        return
    _after(ctx, session_id, event_id, event, ctx.store.apply_event(session_id, planned))


def _after(ctx: Context, session_id: str, event_id: str, event: Event, applied: Applied) -> None:
    if applied.outcome == "invalid":
        ctx.store.set_aside(event_id, event.session_uuid, "invalid")
        log.warning("event_invalid", reason=applied.before)
        return
    if applied.outcome != "applied":
        log.info("event_skipped", result=applied.outcome)
        return
    log.info("event_applied", status_before=applied.before, status_after=applied.after)
    if not applied.wants_news:
        return
    if applied.after == "expired" and applied.before != "expired":
        _notify(ctx, session_id, "session.expired")
    if applied.interactions:
        _notify(ctx, session_id, "session.call_ended", tag=str(event.sequence or event.id))


def _notify(ctx: Context, session_id: str, kind: str, tag: str = "") -> None:
    session = ctx.store.get_session(session_id)
    if session is not None:
        notifications.queue(ctx.store, session, kind, tag)


def _reconcile_at(role: Role, now: datetime) -> datetime | None:
    """When to compare with VTS after this event: soon after a call, sooner after the end."""
    if role is Role.TIMEOUT:
        return now + RECONCILE_AFTER_END
    if role in (Role.LEG_END, Role.LEG_COMPLETE, Role.PARTIES_HANGUP):
        return now + RECONCILE_AFTER_CALL
    return None


def change(event: Event, *, event_id: str, now: datetime) -> EventChange:
    """What ``event`` does, in the terms of the store's apply script. Raises InvalidEvent
    when a value it would count is impossible."""
    role = callbacks.role_of(event.name)
    billed, nanos = _leg_values(event) if role in (Role.LEG_END, Role.LEG_COMPLETE) else (0, 0)
    sequence = event.sequence
    return EventChange(
        event_id=event_id,
        marker=f"seq:{sequence}" if sequence is not None else f"id:{event.id}",
        role=role.value,
        party=callbacks.party_of(event.name),
        sequence=sequence,
        billed=billed,
        amount_nanos=nanos,
        at=_event_time(event),
        entry=_timeline(event),
        session_uuid=event.session_uuid,
        virtual_number=_virtual_number(event) if role is Role.NUMBER else None,
        reconcile_at=_reconcile_at(role, now),
    )


def _leg_values(event: Event) -> tuple[int, int]:
    """An ended leg's billed seconds and amount (in billionths), checked."""
    billed_text = event.params.get("BilledDuration") or "0"
    if not billed_text.isdigit() or int(billed_text) > MAX_BILLED_SECONDS:
        raise InvalidEvent(f"BilledDuration must be 0 to {MAX_BILLED_SECONDS} seconds")
    try:
        amount = Decimal(event.params.get("Amount") or "0")
    except InvalidOperation:
        amount = Decimal("NaN")
    if not (amount.is_finite() and 0 <= amount <= MAX_AMOUNT):
        raise InvalidEvent(f"Amount must be a decimal from 0 to {MAX_AMOUNT}")
    nanos = to_nanos(amount)
    if Decimal(nanos).scaleb(-9) != amount:
        raise InvalidEvent("Amount has more than 9 decimals")
    return int(billed_text), nanos


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
