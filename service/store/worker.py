"""The workers' view of the store: session transitions, events, timers, dead letters."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime

import redis

from service.models import Session, Status, iso, now
from service.store import scripts
from service.store.codec import (
    Applied,
    EventChange,
    decode_session,
    decode_str,
    hash_args,
    statuses,
)
from service.store.deadletters import DeadLetters
from service.store.events import StoredEvents
from service.store.keys import (
    CHANNEL,
    SESSION_RETENTION_SECONDS,
    TIMELINE_LIMIT,
    AppKeys,
    Keys,
    RecordingKeys,
)
from service.store.queue import QueueAccess
from service.store.schedule import Schedule, ScheduleKeys, timer_entries


class Store(StoredEvents, Schedule, QueueAccess, DeadLetters):
    """The workers' view of the store: sessions here; stored events, the schedule, queue
    access and dead letters from their modules.

    ``retention`` (seconds) is how long an ended session is kept: the write that ends a
    session schedules its purge that much later.
    """

    def __init__(self, client: redis.Redis, *, retention: int = SESSION_RETENTION_SECONDS) -> None:
        self.client = client
        self.retention = retention
        self._transition = client.register_script(scripts.TRANSITION)
        self._claim = client.register_script(scripts.CLAIM)
        self._unlock = client.register_script(scripts.UNLOCK)
        self._renew = client.register_script(scripts.RENEW)
        self._apply = client.register_script(scripts.APPLY_EVENT)
        self._init_schedule()
        self._init_dead_letters()
        self._reconcile = client.register_script(scripts.RECONCILE)
        self._finish_update = client.register_script(scripts.FINISH_UPDATE)

    def get_session(self, session_id: str) -> Session | None:
        return decode_session(self.client.hgetall(Keys.session(session_id)))

    def transition(
        self,
        session_id: str,
        to: Status | None,
        *,
        allowed: Sequence[Status],
        fields: Mapping[str, str] | None = None,
        entry: str | None = None,
        fence: str | None = None,
    ) -> tuple[str, Status | None]:
        """Move the session to ``to`` (None: keep) and set ``fields``, if its status is allowed.

        Idempotent: a session already moved on is ``skipped`` and left untouched. With
        ``fence`` (a lock owner token), nothing is written unless that token still holds
        the session's lock: ``fenced``.
        Returns (``ok`` | ``skipped`` | ``missing`` | ``fenced``, the status it had).
        """
        changes = {**(fields or {}), "updated_at": iso(now()) or ""}
        result, current = self._transition(
            keys=[
                Keys.session(session_id),
                Keys.timeline(session_id),
                Keys.schedule(),
                Keys.session_lock(session_id) if fence else "",
            ],
            args=[
                Keys.index() + ":status:",
                to.value if to else "",
                statuses(allowed),
                entry or "",
                CHANNEL,
                session_id,
                TIMELINE_LIMIT,
                self._purge_due(),
                fence or "",
                *hash_args(changes),
            ],
        )
        status = decode_str(current)
        return decode_str(result), Status(status) if status else None

    def open_create_attempt(self, session_id: str, moment: datetime) -> datetime | None:
        """Note that a create request is about to be sent.

        Returns None when no earlier attempt may have reached VTS, else when the first such
        attempt began: VTS may then hold a session we have not heard of.
        """
        key = Keys.session(session_id)
        if self.client.hsetnx(key, "create_uncertain_since", iso(moment) or ""):
            return None
        stored = self.client.hget(key, "create_uncertain_since")
        return datetime.fromisoformat(decode_str(stored)) if stored else moment

    def close_create_attempt(self, session_id: str) -> None:
        """The last attempt certainly created nothing at VTS."""
        self.client.hdel(Keys.session(session_id), "create_uncertain_since")

    def claim_vts_session(self, session_uuid: str, session_id: str) -> str:
        """Tie a VTS session to ours; return the session that owns it (first claim wins)."""
        owner = self._claim(keys=[Keys.vts_session(session_uuid)], args=[session_id])
        return decode_str(owner)

    def lock_session(self, session_id: str, token: str, ttl_ms: int) -> bool:
        """Take the session's work lock, so one VTS call at a time acts on it."""
        return bool(self.client.set(Keys.session_lock(session_id), token, nx=True, px=ttl_ms))

    def renew_session_lock(self, session_id: str, token: str, ttl_ms: int) -> bool:
        """Extend the lock by ``ttl_ms`` if ``token`` still holds it."""
        return bool(self._renew(keys=[Keys.session_lock(session_id)], args=[token, ttl_ms]))

    def unlock_session(self, session_id: str, token: str) -> None:
        self._unlock(keys=[Keys.session_lock(session_id)], args=[token])

    def pending_update(self, session_id: str) -> tuple[str | None, dict[str, str]]:
        """The changes asked for the session and not yet sent to VTS (option -> its JSON
        value, as stored), and the app that asked."""
        raw = self.client.hgetall(Keys.pending_update(session_id))
        fields = {decode_str(k): decode_str(v) for k, v in raw.items()}
        changes = {k: v for k, v in fields.items() if not k.startswith("~")}
        return fields.get("~app"), changes

    def finish_update(
        self,
        session_id: str,
        app: str | None,
        sent: Mapping[str, str],
        *,
        interval: float,
        window: float,
    ) -> str:
        """After ``sent`` (as read by :meth:`pending_update`) went to VTS: forget it unless
        changed again meanwhile, and schedule a follow-up (after ``interval`` seconds, and
        when the app's budget over ``window`` seconds has room) for what is left. An
        ``interval`` of 0 says nothing was sent (the changes were dropped).

        Returns ``done`` or ``scheduled``.
        """
        result = self._finish_update(
            keys=[
                Keys.pending_update(session_id),
                Keys.update_sent(session_id),
                Keys.schedule(),
                AppKeys.budget(app or ""),
            ],
            args=[
                round(interval * 1000),
                round(window * 1000),
                f"update:{session_id}",
                f"{session_id}:{iso(now())}",
                *hash_args(sent),
            ],
        )
        return decode_str(result)

    def add_timeline(self, session_id: str, entry: str) -> None:
        key = Keys.timeline(session_id)
        with self.client.pipeline(transaction=True) as pipe:
            pipe.rpush(key, entry)
            pipe.ltrim(key, -TIMELINE_LIMIT, -1)
            pipe.execute()

    def session_for_vts(self, session_uuid: str) -> str | None:
        owner = self.client.get(Keys.vts_session(session_uuid))
        return decode_str(owner) if owner else None

    def apply_event(self, session_id: str, change: EventChange) -> Applied:
        """Apply one event's effect exactly once (see ``apply_event.lua``); a redelivered
        event is a ``duplicate`` and changes nothing. Schedules the session's
        reconciliation at ``change.reconcile_at`` when given."""
        arguments = {
            "event_id": change.event_id,
            "marker": change.marker,
            "role": change.role,
            "party": change.party,
            "sequence": "" if change.sequence is None else str(change.sequence),
            "billed": str(change.billed),
            "amount_nanos": str(change.amount_nanos),
            "at": change.at,
            "entry": change.entry,
            "virtual_number": change.virtual_number or "",
            "updated_at": iso(now()) or "",
            "reconcile_at": _millis(change.reconcile_at),
            "session_id": session_id,
            "channel": CHANNEL,
            "status_prefix": Keys.index() + ":status:",
            "timeline_limit": TIMELINE_LIMIT,
            "purge_at": str(self._purge_due()),
        }
        outcome, before, after, interactions, news = self._apply(
            keys=[
                Keys.session(session_id),
                Keys.applied(session_id),
                Keys.timeline(session_id),
                Keys.event_stats(),
                Keys.schedule(),
                Keys.in_flight(change.session_uuid),
            ],
            args=[json.dumps(arguments, separators=(",", ":"))],
        )
        return Applied(
            decode_str(outcome),
            decode_str(before),
            decode_str(after),
            int(interactions),
            bool(news),
        )

    def _purge_due(self) -> int:
        """When a session that ends now is purged (epoch ms)."""
        return int((now().timestamp() + self.retention) * 1000)

    def reconcile(self, session_id: str, truth: Mapping[str, int]) -> dict[str, int]:
        """Make the session's counters show ``truth`` (VTS's totals); return what they
        showed before. Events applied later still add to them."""
        args = [item for name in truth for item in (name, truth[name])]
        before = self._reconcile(keys=[Keys.session(session_id)], args=args)
        self.client.publish(CHANNEL, session_id)
        return {name: int(decode_str(value)) for name, value in zip(truth, before, strict=True)}

    def purge_session(self, session_id: str, recording_ids: Sequence[str]) -> None:
        """Delete the session and everything hanging off it: timeline, applied events,
        recordings' records, index entries, timers, its VTS session's claim and stored
        callbacks, its idempotency record. Idempotent. The recordings' files are the
        caller's to delete first."""
        key = Keys.session(session_id)
        member, uuid, idempotency = (
            decode_str(v) if v else None
            for v in self.client.hmget(key, ["index_member", "vts_session_uuid", "idempotency_key"])
        )
        with self.client.pipeline(transaction=False) as pipe:
            pipe.get(Keys.vts_session(uuid or ""))
            pipe.smembers(Keys.callbacks(uuid or ""))
            pipe.hget(idempotency or Keys.idempotency("", ""), "session_id")
            claim, callbacks, idempotent_for = pipe.execute()
        doomed = [key, Keys.timeline(session_id), Keys.applied(session_id)]
        doomed += [RecordingKeys.session_recordings(session_id), Keys.session_lock(session_id)]
        doomed.append(Keys.pending_update(session_id))
        doomed += [RecordingKeys.recording(rec_id) for rec_id in recording_ids]
        if uuid:
            doomed += [Keys.in_flight(uuid), Keys.callbacks(uuid)]
            doomed += [Keys.webhook(decode_str(event_id)) for event_id in callbacks]
            if claim is not None and decode_str(claim) == session_id:
                doomed.append(Keys.vts_session(uuid))
        if idempotency and idempotent_for is not None and decode_str(idempotent_for) == session_id:
            doomed.append(idempotency)
        with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(*doomed)
            if member:
                for index in (Keys.index(), *(Keys.index(status) for status in Status)):
                    pipe.zrem(index, member)
            if callbacks:
                pipe.zrem(Keys.webhooks(), *callbacks)
            pipe.zrem(ScheduleKeys.schedule(), *timer_entries(session_id))
            pipe.execute()

    def note_unsettled(self, session_id: str, snapshot: str | None) -> str | None:
        """Remember a difference with VTS seen now (None: forget it); return the last one."""
        key = Keys.session(session_id)
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hget(key, "reconcile_unsettled")
            if snapshot is None:
                pipe.hdel(key, "reconcile_unsettled")
            else:
                pipe.hset(key, "reconcile_unsettled", snapshot)
            previous = pipe.execute()[0]
        return decode_str(previous) if previous else None

    def count(self, stats: str, field: str, amount: int = 1) -> None:
        self.client.hincrby(stats, field, amount)


def _millis(moment: datetime | None) -> str:
    return str(int(moment.timestamp() * 1000)) if moment else ""
