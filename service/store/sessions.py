"""Sessions: the session hash (both parties, status, counters), its timeline, the status
indexes, idempotency records, the VTS session index, the session lock and the changes
waiting for a VTS update.

An ended session and everything listed here are deleted ``SESSION_RETENTION_SECONDS``
after it ended (unless configured otherwise); live ones keep no TTL but are bounded by the
sessions apps keep open.

The sweep for sessions missing their timers is here (``Sessions.sweep_timers``): it scans
a status index, which sessions own, and only reads the schedule. So is the web's
readiness probe (``AsyncSessions.ping``): the web is ready when it can serve sessions.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import msgspec
import redis
import redis.asyncio
import structlog

from service.apps import Budget
from service.messages import Outgoing
from service.models import NotificationKind, Session, Status, iso, now
from service.settings import Settings
from service.store import lua, scripts
from service.store.apps import AppKeys
from service.store.batching import GroupCommit
from service.store.codec import decode_str, timeline_entry
from service.store.names import PREFIX
from service.store.queue import QueueKeys
from service.store.schedule import ScheduleKeys

log = structlog.get_logger(__name__)

# Where every change of a session is published (for the web's watchers).
CHANNEL = PREFIX + "session-changes"
TIMELINE_LIMIT = 1000
# How long an ended session and everything hanging off it are kept, unless configured.
SESSION_RETENTION_SECONDS = Settings.session_retention
# How long changes asked for a session may wait for their VTS update before they are
# dropped: longer than any session lives.
PENDING_UPDATE_TTL = 2 * 24 * 3600


class SessionKeys:
    @staticmethod
    def session(session_id: str) -> str:
        return f"{PREFIX}session:{session_id}"

    @staticmethod
    def timeline(session_id: str) -> str:
        return f"{PREFIX}session:{session_id}:events"

    @staticmethod
    def index(status: Status | None = None) -> str:
        return f"{PREFIX}sessions" if status is None else f"{PREFIX}sessions:status:{status}"

    @staticmethod
    def idempotency(scope: str, key: str) -> str:
        digest = hashlib.sha256(f"{scope}\0{key}".encode()).hexdigest()
        return f"{PREFIX}idempotency:{digest}"

    @staticmethod
    def vts_session(session_uuid: str) -> str:
        return f"{PREFIX}vts-session:{session_uuid}"

    @staticmethod
    def session_lock(session_id: str) -> str:
        return f"{PREFIX}lock:session:{session_id}"

    @staticmethod
    def pending_update(session_id: str) -> str:
        """Hash: changes asked for a session and not yet sent to VTS (field -> JSON), plus
        who asked and whether an update is on its way."""
        return f"{PREFIX}session:{session_id}:pending-update"

    @staticmethod
    def update_sent(session_id: str) -> str:
        """Set (with a TTL of the update interval) when an update was sent to VTS."""
        return f"{PREFIX}session:{session_id}:update-sent"

    @staticmethod
    def reconcile_stats() -> str:
        return f"{PREFIX}stats:reconcile"


class Outcome(StrEnum):
    """What a transition did: ``ok`` (made), ``skipped`` (the session's status is not one
    it may be made from), ``missing`` (no such session), ``fenced`` (its lock is
    another's)."""

    OK = "ok"
    SKIPPED = "skipped"
    MISSING = "missing"
    FENCED = "fenced"


class CreateResult(StrEnum):
    """What a create did: ``created``, ``replay`` (same key, same body), ``conflict``,
    ``throttled`` (the app has spent its VTS budget) or ``full`` (the app holds its cap
    of live sessions or more)."""

    CREATED = "created"
    REPLAY = "replay"
    CONFLICT = "conflict"
    THROTTLED = "throttled"
    FULL = "full"


class EnqueueResult(StrEnum):
    """What queueing a job on a session did (``AsyncSessions.enqueue_if_status``):
    ``enqueued``, ``skipped`` (its status does not allow the job), ``missing`` (no such
    session, or another app's) or ``throttled`` (the app has spent its VTS budget)."""

    ENQUEUED = "enqueued"
    SKIPPED = "skipped"
    MISSING = "missing"
    THROTTLED = "throttled"


class UpdateResult(StrEnum):
    """What asking for changes to a session did (``AsyncSessions.request_update``):
    ``merged`` (into an update on its way), ``enqueued``, ``scheduled`` (after the update
    interval), ``skipped`` (its status allows no change), ``missing`` (no such session,
    or another app's) or ``throttled`` (the app has spent its VTS budget)."""

    MERGED = "merged"
    ENQUEUED = "enqueued"
    SCHEDULED = "scheduled"
    SKIPPED = "skipped"
    MISSING = "missing"
    THROTTLED = "throttled"


@dataclass(frozen=True)
class CreateOutcome:
    """``retry_after_ms`` when ``throttled``; ``live``, the app's live sessions, when
    ``full``."""

    result: CreateResult
    session_id: str
    retry_after_ms: int = 0
    live: int = 0


@dataclass(frozen=True)
class Page:
    """``skipped``: stored sessions left out of the page because they cannot be read."""

    sessions: list[Session]
    next_cursor: str | None
    skipped: int = 0


class InvalidCursor(ValueError):
    pass


def decode_session(raw: Mapping[bytes | str, bytes | str]) -> Session | None:
    return (
        Session.from_fields({decode_str(k): decode_str(v) for k, v in raw.items()}) if raw else None
    )


def decode_sessions(
    rows: Sequence[Mapping[bytes | str, bytes | str]],
) -> tuple[list[Session], int]:
    """The sessions ``rows`` hold, and how many were left out because they cannot be read.

    One bad record (written by an older version, or by hand) must not break a whole list.
    """
    sessions, skipped = [], 0
    for row in rows:
        try:
            session = decode_session(row)
        except (KeyError, ValueError, TypeError) as exc:
            skipped += 1
            log.warning("session_unreadable", session_id=_row_id(row), error=type(exc).__name__)
            continue
        if session is not None:
            sessions.append(session)
    return sessions, skipped


def _row_id(row: Mapping[bytes | str, bytes | str]) -> str | None:
    found = row.get(b"id", row.get("id"))
    return None if found is None else decode_str(found)[:64]


def index_member(session: Session) -> str:
    """The session's entry in the (lexicographically ordered) indexes: its app first, so
    each app's sessions are one contiguous range, newest last.

    The time is in microseconds: one web process can answer two creates within a
    millisecond, and at millisecond resolution they would be listed in the order of
    their random ids."""
    created = session.created_at
    micros = int(created.timestamp()) * 1_000_000 + created.microsecond
    return f"{session.app or ''}:{micros:016d}:{session.id}"


def app_range(app: str) -> tuple[str, str]:
    """The ZRANGEBYLEX bounds of ``app``'s entries: every member starting ``app:``."""
    return f"[{app}:", f"({app};"


def member_session_id(member: str) -> str:
    return member.rpartition(":")[2]


def encode_cursor(member: str) -> str:
    return base64.urlsafe_b64encode(member.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, app: str) -> str:
    """The index member a cursor points at; InvalidCursor unless it is one of ``app``'s."""
    try:
        member = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except ValueError as exc:  # binascii.Error, UnicodeDecodeError, or not ASCII at all
        raise InvalidCursor("cursor is not one this service gave out") from exc
    owner, _, rest = member.partition(":")
    micros, _, session_id = rest.partition(":")
    if owner != app or not (len(micros) == 16 and micros.isdigit() and session_id):
        raise InvalidCursor("cursor is not one this service gave out")
    return member


def drift_totals(client: redis.Redis) -> dict[str, int]:
    """The differences reconciliation corrected: sessions, and amounts by counter (a hash
    bounded by the counters)."""
    raw: dict[bytes | str, bytes | str] = client.hgetall(SessionKeys.reconcile_stats())
    return {decode_str(field): int(value) for field, value in raw.items()}


# For sessions stored by the service itself (tests, tools) rather than by an app.
UNLIMITED = Budget(limit=2**31, window=1.0)


def _budget_args(budget: Budget) -> dict[str, int]:
    return {"budget_limit": budget.limit, "budget_window": round(budget.window * 1000)}


def _reply(result: Any) -> tuple[str, str]:
    """A script's {outcome, detail} reply."""
    return decode_str(result[0]), decode_str(result[1])


# The statuses in which a session holds a virtual number, or is about to: what the live
# session cap counts.
_HELD = (Status.PENDING, Status.ACTIVE, Status.IN_PROGRESS)

_COMPACT = json.JSONEncoder(separators=(",", ":"), sort_keys=True)


class Sessions:
    """The workers' side of sessions: status transitions, create attempts, the VTS session
    claim, the work lock, pending updates, the timeline, reconciliation and the sweep for
    missing timers.

    ``retention`` (seconds) is how long an ended session is kept: a transition that ends
    a session schedules its purge that much later.
    """

    def __init__(self, client: redis.Redis, *, retention: int = SESSION_RETENTION_SECONDS) -> None:
        self.client = client
        self.retention = retention
        self._transition = client.register_script(scripts.TRANSITION)
        self._claim = client.register_script(lua.source("claim_vts_session.lua"))
        self._unlock = client.register_script(lua.source("unlock.lua"))
        self._renew = client.register_script(lua.source("renew_lock.lua"))
        self._reconcile = client.register_script(lua.source("reconcile.lua"))
        self._finish_update = client.register_script(lua.source("budget.lua", "finish_update.lua"))

    def count_drift(self, field: str, amount: int = 1) -> None:
        """Add to the totals of what reconciliation corrected (see ``drift_totals``)."""
        self.client.hincrby(SessionKeys.reconcile_stats(), field, amount)

    def get_session(self, session_id: str) -> Session | None:
        return decode_session(self.client.hgetall(SessionKeys.session(session_id)))

    def transition(
        self,
        session_id: str,
        to: Status | None,
        *,
        allowed: Sequence[Status],
        fields: Mapping[str, str] | None = None,
        entry: str | None = None,
        fence: str | None = None,
        timers: Sequence[tuple[str, datetime]] = (),
        notify: tuple[NotificationKind, str] | None = None,
    ) -> tuple[Outcome, Status | None]:
        """Move the session to ``to`` (None: keep) and set ``fields``, if its status is
        allowed; in the same write, set its ``timers`` (task, due) and record ``notify``
        (kind, tag: the notification of the change, if the app wants them). See
        ``transition.lua``.

        Idempotent: a session already moved on is ``skipped`` and left untouched, its
        timers and notification included. With ``fence`` (a lock owner token), nothing is
        written unless that token still holds the session's lock: ``fenced``.
        Returns the outcome and the status the session had.
        """
        moment = now()
        arguments: dict[str, Any] = {
            "session_id": session_id,
            "to": to.value if to else "",
            "allowed": [status.value for status in allowed],
            "fields": {**(fields or {}), "updated_at": iso(moment) or ""},
            "entry": entry or "",
            "fence": fence or "",
            "status_prefix": SessionKeys.index() + ":status:",
            "channel": CHANNEL,
            "timeline_limit": TIMELINE_LIMIT,
            "now_ms": int(moment.timestamp() * 1000),
            "now": iso(moment),
            "purge_at": self._purge_due(),
            "timers": [[task, int(due.timestamp() * 1000)] for task, due in timers],
        }
        if notify is not None:
            arguments["notify"] = {"kind": notify[0], "tag": notify[1]}
        result, current = self._transition(
            keys=[
                SessionKeys.session(session_id),
                SessionKeys.timeline(session_id),
                ScheduleKeys.schedule(),
                SessionKeys.session_lock(session_id) if fence else "",
            ],
            args=[msgspec.json.encode(arguments)],
        )
        status = decode_str(current)
        return Outcome(decode_str(result)), Status(status) if status else None

    def open_create_attempt(self, session_id: str, moment: datetime) -> datetime | None:
        """Note that a create request is about to be sent.

        Returns None when no earlier attempt may have reached VTS, else when the first such
        attempt began: VTS may then hold a session we have not heard of.
        """
        key = SessionKeys.session(session_id)
        if self.client.hsetnx(key, "create_uncertain_since", iso(moment) or ""):
            return None
        stored = self.client.hget(key, "create_uncertain_since")
        return datetime.fromisoformat(decode_str(stored)) if stored else moment

    def close_create_attempt(self, session_id: str) -> None:
        """The last attempt certainly created nothing at VTS."""
        self.client.hdel(SessionKeys.session(session_id), "create_uncertain_since")

    def claim_vts_session(self, session_uuid: str, session_id: str) -> str:
        """Tie a VTS session to ours; return the session that owns it (first claim wins)."""
        owner = self._claim(keys=[SessionKeys.vts_session(session_uuid)], args=[session_id])
        return decode_str(owner)

    def lock_session(self, session_id: str, token: str, ttl_ms: int) -> bool:
        """Take the session's work lock, so one VTS call at a time acts on it."""
        return bool(
            self.client.set(SessionKeys.session_lock(session_id), token, nx=True, px=ttl_ms)
        )

    def renew_session_lock(self, session_id: str, token: str, ttl_ms: int) -> bool:
        """Extend the lock by ``ttl_ms`` if ``token`` still holds it."""
        return bool(self._renew(keys=[SessionKeys.session_lock(session_id)], args=[token, ttl_ms]))

    def unlock_session(self, session_id: str, token: str) -> None:
        self._unlock(keys=[SessionKeys.session_lock(session_id)], args=[token])

    def pending_update(self, session_id: str) -> tuple[str | None, dict[str, str]]:
        """The changes asked for the session and not yet sent to VTS (option -> its JSON
        value, as stored), and the app that asked."""
        raw = self.client.hgetall(SessionKeys.pending_update(session_id))
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
        arguments = {
            "interval": round(interval * 1000),
            "budget_window": round(window * 1000),
            "timer": f"update:{session_id}",
            "budget_member": f"{session_id}:{iso(now())}",
            "sent": dict(sent),
        }
        result = self._finish_update(
            keys=[
                SessionKeys.pending_update(session_id),
                SessionKeys.update_sent(session_id),
                ScheduleKeys.schedule(),
                AppKeys.budget(app or ""),
            ],
            args=[msgspec.json.encode(arguments)],
        )
        return decode_str(result)

    def add_timeline(self, session_id: str, entry: str) -> None:
        key = SessionKeys.timeline(session_id)
        with self.client.pipeline(transaction=True) as pipe:
            pipe.rpush(key, entry)
            pipe.ltrim(key, -TIMELINE_LIMIT, -1)
            pipe.execute()

    def session_for_vts(self, session_uuid: str) -> str | None:
        owner = self.client.get(SessionKeys.vts_session(session_uuid))
        return decode_str(owner) if owner else None

    def _purge_due(self) -> int:
        """When a session that ends now is purged (epoch ms)."""
        return int((now().timestamp() + self.retention) * 1000)

    def reconcile(self, session_id: str, truth: Mapping[str, int]) -> dict[str, int]:
        """Make the session's counters show ``truth`` (VTS's totals); return what they
        showed before. Events applied later still add to them."""
        totals = [[name, truth[name]] for name in truth]
        before = self._reconcile(
            keys=[SessionKeys.session(session_id)],
            args=[msgspec.json.encode({"totals": totals})],
        )
        self.client.publish(CHANNEL, session_id)
        return {name: int(decode_str(value)) for name, value in zip(truth, before, strict=True)}

    def note_unsettled(self, session_id: str, snapshot: str | None) -> str | None:
        """Remember a difference with VTS seen now (None: forget it); return the last one."""
        key = SessionKeys.session(session_id)
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hget(key, "reconcile_unsettled")
            if snapshot is None:
                pipe.hdel(key, "reconcile_unsettled")
            else:
                pipe.hset(key, "reconcile_unsettled", snapshot)
            previous = pipe.execute()[0]
        return decode_str(previous) if previous else None

    def sweep_timers(
        self, status: Status, cursor: int, tasks: Sequence[str], count: int = 500
    ) -> tuple[int, list[tuple[str, str]]]:
        """One step of a scan over the sessions in ``status``: the (session id, task) of
        each ``tasks`` timer they lack, and the cursor of the next step (0: done)."""
        cursor, members = self.client.zscan(SessionKeys.index(status), cursor, count=count)
        ids = [
            member_session_id(decode_str(member))
            for member, _ in members
            if isinstance(member, bytes | str)
        ]
        wanted = [(session_id, task) for session_id in ids for task in tasks]
        with self.client.pipeline(transaction=False) as pipe:
            for session_id, task in wanted:
                pipe.zscore(ScheduleKeys.schedule(), f"{task}:{session_id}")
            scores = pipe.execute()
        return cursor, [pair for pair, score in zip(wanted, scores, strict=True) if score is None]


class AsyncSessions:
    """The web's side of sessions: creating them, reading and listing them, queueing work
    on them and asking for updates; each write that causes a VTS request spends the app's
    budget.

    Writes go through ``group``, the group commit they share with the web's other writes
    (by default one of their own).
    """

    def __init__(self, client: redis.asyncio.Redis, *, group: GroupCommit | None = None) -> None:
        self.client = client
        self._group = group if group is not None else GroupCommit(client)
        self._create = client.register_script(lua.source("budget.lua", "create.lua"))
        self._enqueue_if = client.register_script(lua.source("budget.lua", "enqueue_if.lua"))
        self._request_update = client.register_script(
            lua.source("budget.lua", "request_update.lua")
        )

    async def ping(self) -> bool:
        """Whether Redis answers (raises RedisError or OSError when it cannot be reached)."""
        return bool(await self.client.ping())

    async def create_session(
        self,
        session: Session,
        message: Outgoing,
        *,
        idempotency: tuple[str, str, str] | None,
        idempotency_ttl: int,
        budget: Budget = UNLIMITED,
        max_live: int = 0,
    ) -> CreateOutcome:
        """Store a new session and queue its creation, atomically, in a shared round trip.

        ``idempotency`` is (scope, key, fingerprint of the request). When the key is known,
        nothing is written and the outcome names the existing session. When the session's
        app holds ``max_live`` live sessions (pending, active or in progress; 0: no cap),
        nothing is written and the outcome is ``full``. When the app has spent its
        ``budget``, nothing is written and the outcome is ``throttled``.
        """
        scope, key, fingerprint = idempotency or ("", "", "")
        low, high = app_range(session.app or "")
        arguments = {
            "session_id": session.id,
            "index_member": index_member(session),
            "message_id": message.redis_message_id,
            "payload": message.payload.decode(),
            "entry": timeline_entry("requested", request_id=session.request_id, app=session.app),
            "fingerprint": fingerprint,
            "idempotency_ttl": idempotency_ttl,
            **_budget_args(budget),
            "max_live": max_live,
            "app_low": low,
            "app_high": high,
            "fields": session.to_fields(),
        }
        result = await self._group.call(
            self._create,
            keys=[
                SessionKeys.idempotency(scope, key) if idempotency else "",
                SessionKeys.session(session.id),
                SessionKeys.index(),
                SessionKeys.index(session.status),
                SessionKeys.timeline(session.id),
                QueueKeys.queue(message.queue_name),
                QueueKeys.queue_messages(message.queue_name),
                AppKeys.budget(session.app or ""),
                *(SessionKeys.index(status) for status in _HELD),
            ],
            args=[msgspec.json.encode(arguments)],
        )
        text, detail = _reply(result)
        outcome = CreateResult(text)
        if outcome is CreateResult.THROTTLED:
            return CreateOutcome(outcome, "", retry_after_ms=int(detail))
        if outcome is CreateResult.FULL:
            return CreateOutcome(outcome, "", live=int(detail))
        return CreateOutcome(outcome, detail)

    async def get_session(self, session_id: str) -> Session | None:
        return decode_session(await self.client.hgetall(SessionKeys.session(session_id)))

    async def list_sessions(
        self, app: str, *, status: Status | None, limit: int, cursor: str | None
    ) -> Page:
        """``app``'s sessions, newest first; raises InvalidCursor for a cursor not of its."""
        lowest, highest = app_range(app)
        start = "(" + decode_cursor(cursor, app) if cursor else highest
        members = await self.client.zrevrangebylex(
            SessionKeys.index(status), start, lowest, start=0, num=limit + 1
        )
        page = [decode_str(m) for m in members[:limit]]
        async with self.client.pipeline(transaction=False) as pipe:
            for member in page:
                pipe.hgetall(SessionKeys.session(member_session_id(member)))
            rows = await pipe.execute()
        sessions, skipped = decode_sessions(rows)
        more = len(members) > limit
        return Page(sessions, encode_cursor(page[-1]) if more and page else None, skipped)

    async def enqueue_if_status(
        self,
        session_id: str,
        allowed: Sequence[Status],
        message: Outgoing,
        entry: str,
        *,
        app: str,
        budget: Budget,
    ) -> tuple[EnqueueResult, str]:
        """Queue ``message`` if the session is ``app``'s and its status is one of ``allowed``,
        spending one of the app's ``budget`` (see ``enqueue_if.lua``).

        Returns (``ENQUEUED`` | ``SKIPPED`` | ``MISSING``, the status it had: '' when
        missing) or (``THROTTLED``, milliseconds until the budget has room).
        """
        arguments = {
            "app": app,
            "allowed": [status.value for status in allowed],
            "entry": entry,
            "message_id": message.redis_message_id,
            "payload": message.payload.decode(),
            **_budget_args(budget),
        }
        result = await self._group.call(
            self._enqueue_if,
            keys=[
                SessionKeys.session(session_id),
                SessionKeys.timeline(session_id),
                QueueKeys.queue(message.queue_name),
                QueueKeys.queue_messages(message.queue_name),
                AppKeys.budget(app),
            ],
            args=[msgspec.json.encode(arguments)],
        )
        text, detail = _reply(result)
        return EnqueueResult(text), detail

    async def request_update(
        self,
        session_id: str,
        changes: dict[str, Any],
        message: Outgoing,
        entry: str,
        *,
        app: str,
        allowed: Sequence[Status],
        budget: Budget,
    ) -> tuple[UpdateResult, str]:
        """Ask for ``changes`` to ``app``'s session, merged with any not yet sent to VTS
        (see ``request_update.lua``).

        Returns (``MERGED`` | ``ENQUEUED`` | ``SCHEDULED`` | ``SKIPPED`` | ``MISSING``, the
        status it had: '' when missing) or (``THROTTLED``, milliseconds until the budget
        has room).
        """
        arguments = {
            "app": app,
            "allowed": [status.value for status in allowed],
            "entry": entry,
            "message_id": message.redis_message_id,
            "payload": message.payload.decode(),
            **_budget_args(budget),
            "pending_ttl": PENDING_UPDATE_TTL,
            "timeline_limit": TIMELINE_LIMIT,
            "timer": f"update:{session_id}",
            "changes": {name: _COMPACT.encode(value) for name, value in changes.items()},
        }
        result = await self._group.call(
            self._request_update,
            keys=[
                SessionKeys.session(session_id),
                SessionKeys.timeline(session_id),
                SessionKeys.pending_update(session_id),
                SessionKeys.update_sent(session_id),
                QueueKeys.queue(message.queue_name),
                QueueKeys.queue_messages(message.queue_name),
                ScheduleKeys.schedule(),
                AppKeys.budget(app),
            ],
            args=[msgspec.json.encode(arguments)],
        )
        text, detail = _reply(result)
        return UpdateResult(text), detail

    async def owner(self, session_id: str) -> str | None:
        """The app the session belongs to (None when there is no such session)."""
        found = await self.client.hget(SessionKeys.session(session_id), "app")
        return decode_str(found) if found else None

    async def timeline(self, session_id: str) -> list[dict[str, Any]]:
        raw = await self.client.lrange(SessionKeys.timeline(session_id), 0, -1)
        return [json.loads(item) for item in raw]
