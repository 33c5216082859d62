"""The Redis store: the only code that knows key names.

Everything that changes several keys together does it in one Lua script, so a crash can
never leave a session without its index entry, or an accepted request without its queued
message. ``AsyncStore`` serves the web (redis.asyncio); ``Store`` serves the workers.
Both use clients with ``decode_responses=False`` so they can share dramatiq's connection.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
import redis.asyncio

from service.batching import GroupCommit
from service.events import Event
from service.messages import Outgoing
from service.models import Session, Status, iso, now
from service.recordings import (
    Recording,
    RecordingStatus,
    recording_format,
    recording_id,
    stored_name,
)

PREFIX = "masking:"
# dramatiq's Redis broker keeps queue ``q`` as a list ``dramatiq:q`` of message ids and a
# hash ``dramatiq:q.msgs`` of id -> message; enqueueing is those two writes.
DRAMATIQ_NAMESPACE = "dramatiq"
CHANNEL = PREFIX + "session-changes"
TIMELINE_LIMIT = 1000
# How long raw callbacks (and the nonces that came with them) are kept: for replays,
# duplicate detection and audits.
WEBHOOK_RETENTION_SECONDS = 7 * 24 * 3600


class Keys:
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
    def arrived(session_uuid: str) -> str:
        """The sequence numbers of the VTS session's callbacks that have reached us."""
        return f"{PREFIX}vts-session:{session_uuid}:arrived"

    @staticmethod
    def in_flight(session_uuid: str) -> str:
        """How many of a VTS session's events are stored but not yet applied (an hour's
        TTL, renewed by each new event, so a count that goes wrong heals)."""
        return f"{PREFIX}vts-session:{session_uuid}:in-flight"

    @staticmethod
    def session_lock(session_id: str) -> str:
        return f"{PREFIX}lock:session:{session_id}"

    @staticmethod
    def vts_rate_limit(auth_id: str) -> str:
        return f"{PREFIX}rate-limit:vts:{auth_id}"

    @staticmethod
    def webhook(event_id: str) -> str:
        return f"{PREFIX}webhook:{event_id}"

    @staticmethod
    def webhooks() -> str:
        return f"{PREFIX}webhooks"

    @staticmethod
    def nonce(nonce: str) -> str:
        return f"{PREFIX}nonce:{nonce}"

    @staticmethod
    def webhook_stats() -> str:
        return f"{PREFIX}stats:webhooks"

    @staticmethod
    def applied(session_id: str) -> str:
        return f"{PREFIX}session:{session_id}:applied"

    @staticmethod
    def orphan_events() -> str:
        return f"{PREFIX}orphan-events"

    @staticmethod
    def event_stats() -> str:
        return f"{PREFIX}stats:events"

    @staticmethod
    def reconcile_stats() -> str:
        return f"{PREFIX}stats:reconcile"

    @staticmethod
    def schedule() -> str:
        return f"{PREFIX}schedule"

    @staticmethod
    def scheduler_leader() -> str:
        return f"{PREFIX}scheduler-leader"

    @staticmethod
    def queue(queue_name: str) -> str:
        return f"{DRAMATIQ_NAMESPACE}:{queue_name}"

    @staticmethod
    def dead_letters(queue_name: str) -> str:
        return f"{DRAMATIQ_NAMESPACE}:{queue_name}.XQ"

    @staticmethod
    def dead_letter_messages(queue_name: str) -> str:
        return f"{DRAMATIQ_NAMESPACE}:{queue_name}.XQ.msgs"

    @staticmethod
    def dead_letter_notes() -> str:
        return f"{PREFIX}dead-letter-errors"

    @staticmethod
    def queue_messages(queue_name: str) -> str:
        return f"{DRAMATIQ_NAMESPACE}:{queue_name}.msgs"


# KEYS: idempotency ('' when no key was given), session, index, status index, timeline,
#       queue, queue messages
# ARGV: session id, index member, redis message id, payload, timeline entry,
#       fingerprint, ttl, field, value, ...
_CREATE = """
if KEYS[1] ~= '' then
  local found = redis.call('HMGET', KEYS[1], 'fingerprint', 'session_id')
  if found[1] then
    if found[1] == ARGV[6] then return {'replay', found[2]} end
    return {'conflict', found[2]}
  end
  redis.call('HSET', KEYS[1], 'fingerprint', ARGV[6], 'session_id', ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[7])
end
redis.call('HSET', KEYS[2], 'index_member', ARGV[2], unpack(ARGV, 8))
redis.call('ZADD', KEYS[3], 0, ARGV[2])
redis.call('ZADD', KEYS[4], 0, ARGV[2])
redis.call('RPUSH', KEYS[5], ARGV[5])
redis.call('HSET', KEYS[7], ARGV[3], ARGV[4])
redis.call('RPUSH', KEYS[6], ARGV[3])
return {'created', ARGV[1]}
"""

# KEYS: session, timeline
# ARGV: status index prefix, new status, allowed current statuses (space separated),
#       timeline entry or '', channel, session id, timeline limit, field, value, ...
_TRANSITION = """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return {'missing', ''} end
if not string.find(' ' .. ARGV[3] .. ' ', ' ' .. current .. ' ', 1, true) then
  return {'skipped', current}
end
local member = redis.call('HGET', KEYS[1], 'index_member')
if #ARGV > 7 then redis.call('HSET', KEYS[1], unpack(ARGV, 8)) end
if ARGV[2] ~= '' and ARGV[2] ~= current then
  redis.call('HSET', KEYS[1], 'status', ARGV[2])
  redis.call('ZREM', ARGV[1] .. current, member)
  redis.call('ZADD', ARGV[1] .. ARGV[2], 0, member)
end
if ARGV[4] ~= '' then
  redis.call('RPUSH', KEYS[2], ARGV[4])
  redis.call('LTRIM', KEYS[2], -tonumber(ARGV[7]), -1)
end
redis.call('PUBLISH', ARGV[5], ARGV[6])
return {'ok', current}
"""

# KEYS: session, timeline, queue, queue messages
# ARGV: allowed statuses (space separated), timeline entry, redis message id, payload
_ENQUEUE_IF = """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return {'missing', ''} end
if not string.find(' ' .. ARGV[1] .. ' ', ' ' .. current .. ' ', 1, true) then
  return {'skipped', current}
end
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[4], ARGV[3], ARGV[4])
redis.call('RPUSH', KEYS[3], ARGV[3])
return {'enqueued', current}
"""

# KEYS: nonce ('' when none), event, queue, queue messages, event index, stats,
#       the VTS session's in-flight count and arrived sequence numbers ('' for recordings)
# ARGV: event id, retention (s), received (ms), redis message id, payload,
#       sequence number ('' none), field, value, ...
_INGEST = """
if KEYS[1] ~= '' then
  local seen = redis.call('GET', KEYS[1])
  if seen and seen ~= ARGV[1] then
    redis.call('HINCRBY', KEYS[6], 'replayed', 1)
    return 'replayed'
  end
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('HINCRBY', KEYS[6], 'duplicate', 1)
  return 'duplicate'
end
if KEYS[1] ~= '' then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) end
redis.call('HSET', KEYS[2], unpack(ARGV, 7))
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[5], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[4], ARGV[4], ARGV[5])
redis.call('RPUSH', KEYS[3], ARGV[4])
redis.call('HINCRBY', KEYS[6], 'accepted', 1)
if KEYS[7] ~= '' then
  redis.call('INCR', KEYS[7])
  redis.call('EXPIRE', KEYS[7], 3600)
  if ARGV[6] ~= '' then
    redis.call('SADD', KEYS[8], ARGV[6])
    redis.call('EXPIRE', KEYS[8], 3600)
  end
end
return 'accepted'
"""

# Applies one VTS session event, exactly once (the effect and its marker in one script).
# KEYS: session, applied set, timeline, event stats, schedule, the VTS session's in-flight
#       count and arrived sequence numbers
# ARGV: 1 marker, 2 previous marker ('' none), 3 force (0/1), 4 role, 5 party,
#       6 billed seconds, 7 amount nanos, 8 event time (iso), 9 timeline entry,
#       10 channel, 11 session id, 12 status index prefix, 13 new virtual number,
#       14 updated_at, 15 reconcile due (ms, '' for none), 16 previous sequence number
# Force: 0 wait for the previous event; 1 go on unless it has arrived; 2 go on.
# Roles: leg (a leg's progress), leg_end, leg_end_complete (the family without a parties
# event), parties_hangup, timeout, number, other.
_APPLY_EVENT = """
local s, applied = KEYS[1], KEYS[2]
local function landed()
  if tonumber(redis.call('GET', KEYS[6]) or '0') > 0 then redis.call('DECR', KEYS[6]) end
end
if redis.call('SISMEMBER', applied, ARGV[1]) == 1 then
  landed()
  return 'duplicate'
end
local status = redis.call('HGET', s, 'status')
if not status then return 'missing' end
-- The previous event not applied yet: wait for it while it has not waited long enough
-- (force 0), or while it has arrived and so will be applied soon (force 1).
if ARGV[2] ~= '' and ARGV[3] ~= '2' and redis.call('SISMEMBER', applied, ARGV[2]) == 0 then
  if ARGV[3] == '0' or redis.call('SISMEMBER', KEYS[7], ARGV[16]) == 1 then
    return 'hold'
  end
end
redis.call('SADD', applied, ARGV[1])
landed()
local role, party = ARGV[4], ARGV[5]
local live = status == 'active' or status == 'in_progress'
local new_status = status
local interaction = '0'
if role == 'leg' then
  redis.call('HSET', s, 'call_open_' .. party, '1')
  if live then new_status = 'in_progress' end
elseif role == 'answer' then
  redis.call('HSET', s, 'call_open_' .. party, '1', 'call_answered_' .. party, '1')
  if live then new_status = 'in_progress' end
elseif role == 'leg_end' or role == 'leg_end_complete' then
  redis.call('HINCRBY', s, 'call_count', 1)
  redis.call('HINCRBY', s, 'billed_duration', ARGV[6])
  redis.call('HINCRBY', s, 'call_amount_nanos', ARGV[7])
  redis.call('HSET', s, 'call_open_' .. party, '0', 'last_interaction_at', ARGV[8])
  local open = redis.call('HMGET', s, 'call_open_first', 'call_open_second')
  if open[1] ~= '1' and open[2] ~= '1' then
    if role == 'leg_end_complete' then
      local answered = redis.call('HMGET', s, 'call_answered_first', 'call_answered_second')
      if answered[1] == '1' and answered[2] == '1' then
        redis.call('HINCRBY', s, 'interaction_count', 1)
        interaction = '1'
      end
    end
    redis.call('HDEL', s, 'call_answered_first', 'call_answered_second')
    if status == 'in_progress' then new_status = 'active' end
  end
elseif role == 'call' then
  if live then new_status = 'in_progress' end
elseif role == 'parties_hangup' then
  redis.call('HINCRBY', s, 'interaction_count', 1)
  interaction = '1'
  redis.call('HSET', s, 'last_interaction_at', ARGV[8])
  if status == 'in_progress' then new_status = 'active' end
elseif role == 'timeout' then
  if live then new_status = 'expired' end
elseif role == 'number' then
  if ARGV[13] ~= '' then redis.call('HSET', s, 'virtual_number', ARGV[13]) end
else
  redis.call('HINCRBY', KEYS[4], 'unknown', 1)
end
if new_status ~= status then
  local member = redis.call('HGET', s, 'index_member')
  redis.call('HSET', s, 'status', new_status)
  redis.call('ZREM', ARGV[12] .. status, member)
  redis.call('ZADD', ARGV[12] .. new_status, 0, member)
end
redis.call('HSET', s, 'updated_at', ARGV[14])
redis.call('RPUSH', KEYS[3], ARGV[9])
redis.call('LTRIM', KEYS[3], -1000, -1)
redis.call('HINCRBY', KEYS[4], 'applied', 1)
redis.call('PUBLISH', ARGV[10], ARGV[11])
if ARGV[15] ~= '' then redis.call('ZADD', KEYS[5], ARGV[15], 'reconcile:' .. ARGV[11]) end
local notify = redis.call('HEXISTS', s, 'callback_url')
return 'applied:' .. status .. ':' .. new_status .. ':' .. interaction .. ':' .. notify
"""

# KEYS: schedule. ARGV: now (ms), limit, lease (ms). Returns the due entries and leases
# them: an entry comes due again after the lease unless its task reschedules or removes
# it, so a scheduler that dies after taking entries loses none.
_TAKE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, entry in ipairs(due) do
  redis.call('ZADD', KEYS[1], ARGV[1] + ARGV[3], entry)
end
return due
"""

# KEYS: leader. ARGV: token, ttl (ms). Take or keep the lead; true if we hold it.
_LEAD = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not holder then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0
"""

# Sets each counter's adjustment so that counter + adjustment equals VTS's total.
# KEYS: session. ARGV: counter, VTS total, counter, VTS total, ...
# Returns the shown values before, in the same order.
_RECONCILE = """
local before = {}
for i = 1, #ARGV, 2 do
  local name = ARGV[i]
  local counted = tonumber(redis.call('HGET', KEYS[1], name) or '0')
  local adjust = tonumber(redis.call('HGET', KEYS[1], 'adjust_' .. name) or '0')
  -- %.0f, not tostring: Lua would write large numbers in exponent form.
  before[#before + 1] = string.format('%.0f', counted + adjust)
  local wanted = tonumber(ARGV[i + 1])
  redis.call('HSET', KEYS[1], 'adjust_' .. name, string.format('%.0f', wanted - counted))
end
return before
"""

# Moves a dead letter back onto its queue as a fresh message (retries start again).
# KEYS: dead letters, dead letter messages, queue, queue messages, dead letter notes
# ARGV: dead letter id, new id, new payload. Returns 1 if it was there.
_REPLAY_DEAD_LETTER = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
redis.call('HSET', KEYS[4], ARGV[2], ARGV[3])
redis.call('RPUSH', KEYS[3], ARGV[2])
return 1
"""

# KEYS: lock. ARGV: token. Deletes the lock only if we still hold it.
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: vts session claim. ARGV: session id. Returns the owner.
_CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then return ARGV[1] end
return redis.call('GET', KEYS[1])
"""


@dataclass(frozen=True)
class CreateOutcome:
    """``result`` is ``created``, ``replay`` (same key, same body) or ``conflict``."""

    result: str
    session_id: str


@dataclass(frozen=True)
class EventChange:
    """What one VTS event does to a session; see the _APPLY_EVENT script for roles."""

    marker: str
    previous_marker: str | None
    force: int  # 0: wait for the previous event; 1: unless it never arrived; 2: go on
    role: str
    party: str
    billed: int
    amount_nanos: int
    at: str
    entry: str
    session_uuid: str
    previous_sequence: str | None = None
    virtual_number: str | None = None
    reconcile_at: datetime | None = None


@dataclass(frozen=True)
class Page:
    sessions: list[Session]
    next_cursor: str | None


class InvalidCursor(ValueError):
    pass


# One encoder, built once: json.dumps builds a new one per call when given separators.
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))


def timeline_entry(kind: str, **detail: Any) -> str:
    return _COMPACT_JSON.encode({"at": iso(now()), "type": kind, **detail})


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _decode(raw: Mapping[bytes | str, bytes | str]) -> Session | None:
    return Session.from_fields({_text(k): _text(v) for k, v in raw.items()}) if raw else None


def _webhook(raw: Mapping[Any, Any]) -> tuple[str, dict[str, str], int] | None:
    if not raw:
        return None
    fields = {_text(k): _text(v) for k, v in raw.items()}
    return fields["kind"], json.loads(fields["params"]), int(fields["received_ms"])


def _flatten(fields: Mapping[str, str]) -> list[str]:
    return [item for pair in fields.items() for item in pair]


def index_member(session: Session) -> str:
    millis = int(session.created_at.timestamp() * 1000)
    return f"{millis:013d}:{session.id}"


def encode_cursor(member: str) -> str:
    return base64.urlsafe_b64encode(member.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        member = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidCursor("cursor is not one this service gave out") from exc
    millis, _, session_id = member.partition(":")
    if not (millis.isdigit() and session_id):
        raise InvalidCursor("cursor is not one this service gave out")
    return member


def _statuses(allowed: Sequence[Status]) -> str:
    return " ".join(status.value for status in allowed)


class AsyncStore:
    """The web's view of the store."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client
        self._create = client.register_script(_CREATE)
        self._enqueue_if = client.register_script(_ENQUEUE_IF)
        self._ingest = client.register_script(_INGEST)
        self._group = GroupCommit(client)

    async def ingest_webhook(
        self, event: Event, message: Outgoing, *, nonce: str | None, received_ms: int
    ) -> str:
        """Make a VTS callback durable and queue its processing, in one shared round trip.

        Returns ``accepted``, ``duplicate`` (this event is already stored: nothing done) or
        ``replayed`` (the nonce came with another event before: nothing done).
        """
        fields = {
            "kind": event.kind,
            "params": json.dumps(dict(event.params), separators=(",", ":")),
            "received_ms": str(received_ms),
        }
        result = await self._group.call(
            self._ingest,
            keys=[
                Keys.nonce(nonce) if nonce else "",
                Keys.webhook(event.id),
                Keys.queue(message.queue_name),
                Keys.queue_messages(message.queue_name),
                Keys.webhooks(),
                Keys.webhook_stats(),
                Keys.in_flight(event.session_uuid) if event.kind == "session" else "",
                Keys.arrived(event.session_uuid) if event.kind == "session" else "",
            ],
            args=[
                event.id,
                WEBHOOK_RETENTION_SECONDS,
                received_ms,
                message.redis_message_id,
                message.payload,
                str(event.sequence) if event.kind == "session" and event.sequence else "",
                *_flatten(fields),
            ],
        )
        return _text(result)

    async def create_session(
        self,
        session: Session,
        message: Outgoing,
        *,
        idempotency: tuple[str, str, str] | None,
        idempotency_ttl: int,
    ) -> CreateOutcome:
        """Store a new session and queue its creation, atomically, in a shared round trip.

        ``idempotency`` is (scope, key, fingerprint of the request). When the key is known,
        nothing is written and the outcome names the existing session.
        """
        scope, key, fingerprint = idempotency or ("", "", "")
        member = index_member(session)
        result = await self._group.call(
            self._create,
            keys=[
                Keys.idempotency(scope, key) if idempotency else "",
                Keys.session(session.id),
                Keys.index(),
                Keys.index(session.status),
                Keys.timeline(session.id),
                Keys.queue(message.queue_name),
                Keys.queue_messages(message.queue_name),
            ],
            args=[
                session.id,
                member,
                message.redis_message_id,
                message.payload,
                timeline_entry("requested", request_id=session.request_id),
                fingerprint,
                idempotency_ttl,
                *_flatten(session.to_fields()),
            ],
        )
        return CreateOutcome(_text(result[0]), _text(result[1]))

    async def get_session(self, session_id: str) -> Session | None:
        return _decode(await self.client.hgetall(Keys.session(session_id)))

    async def list_sessions(self, *, status: Status | None, limit: int, cursor: str | None) -> Page:
        start = "(" + decode_cursor(cursor) if cursor else "+"
        members = await self.client.zrevrangebylex(
            Keys.index(status), start, "-", start=0, num=limit + 1
        )
        page = [_text(m) for m in members[:limit]]
        async with self.client.pipeline(transaction=False) as pipe:
            for member in page:
                pipe.hgetall(Keys.session(member.partition(":")[2]))
            rows = await pipe.execute()
        sessions = [s for s in map(_decode, rows) if s is not None]
        more = len(members) > limit
        return Page(sessions, encode_cursor(page[-1]) if more and page else None)

    async def enqueue_if_status(
        self, session_id: str, allowed: Sequence[Status], message: Outgoing, entry: str
    ) -> tuple[str, Status | None]:
        """Queue ``message`` if the session's status is one of ``allowed``.

        Returns (``enqueued`` | ``skipped`` | ``missing``, the status it had).
        """
        result, current = await self._group.call(
            self._enqueue_if,
            keys=[
                Keys.session(session_id),
                Keys.timeline(session_id),
                Keys.queue(message.queue_name),
                Keys.queue_messages(message.queue_name),
            ],
            args=[_statuses(allowed), entry, message.redis_message_id, message.payload],
        )
        status = _text(current)
        return _text(result), Status(status) if status else None

    async def timeline(self, session_id: str) -> list[dict[str, Any]]:
        raw = await self.client.lrange(Keys.timeline(session_id), 0, -1)
        return [json.loads(item) for item in raw]

    async def ping(self) -> bool:
        return bool(await self.client.ping())


class Store:
    """The workers' view of the store."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._transition = client.register_script(_TRANSITION)
        self._claim = client.register_script(_CLAIM)
        self._unlock = client.register_script(_UNLOCK)
        self._apply = client.register_script(_APPLY_EVENT)
        self._take_due = client.register_script(_TAKE_DUE)
        self._lead = client.register_script(_LEAD)
        self._reconcile = client.register_script(_RECONCILE)
        self._replay_dead_letter = client.register_script(_REPLAY_DEAD_LETTER)

    def get_session(self, session_id: str) -> Session | None:
        return _decode(self.client.hgetall(Keys.session(session_id)))

    def transition(
        self,
        session_id: str,
        to: Status | None,
        *,
        allowed: Sequence[Status],
        fields: Mapping[str, str] | None = None,
        entry: str | None = None,
    ) -> tuple[str, Status | None]:
        """Move the session to ``to`` (None: keep) and set ``fields``, if its status is allowed.

        Idempotent: a session already moved on is ``skipped`` and left untouched.
        Returns (``ok`` | ``skipped`` | ``missing``, the status it had).
        """
        changes = {**(fields or {}), "updated_at": iso(now()) or ""}
        result, current = self._transition(
            keys=[Keys.session(session_id), Keys.timeline(session_id)],
            args=[
                Keys.index() + ":status:",
                to.value if to else "",
                _statuses(allowed),
                entry or "",
                CHANNEL,
                session_id,
                TIMELINE_LIMIT,
                *_flatten(changes),
            ],
        )
        status = _text(current)
        return _text(result), Status(status) if status else None

    def open_create_attempt(self, session_id: str, moment: datetime) -> datetime | None:
        """Note that a create request is about to be sent.

        Returns None when no earlier attempt may have reached VTS, else when the first such
        attempt began: VTS may then hold a session we have not heard of.
        """
        key = Keys.session(session_id)
        if self.client.hsetnx(key, "create_uncertain_since", iso(moment) or ""):
            return None
        stored = self.client.hget(key, "create_uncertain_since")
        return datetime.fromisoformat(_text(stored)) if stored else moment

    def close_create_attempt(self, session_id: str) -> None:
        """The last attempt certainly created nothing at VTS."""
        self.client.hdel(Keys.session(session_id), "create_uncertain_since")

    def claim_vts_session(self, session_uuid: str, session_id: str) -> str:
        """Tie a VTS session to ours; return the session that owns it (first claim wins)."""
        owner = self._claim(keys=[Keys.vts_session(session_uuid)], args=[session_id])
        return _text(owner)

    def lock_session(self, session_id: str, token: str, ttl_ms: int) -> bool:
        """Take the session's work lock, so one VTS call at a time acts on it."""
        return bool(self.client.set(Keys.session_lock(session_id), token, nx=True, px=ttl_ms))

    def unlock_session(self, session_id: str, token: str) -> None:
        self._unlock(keys=[Keys.session_lock(session_id)], args=[token])

    def add_timeline(self, session_id: str, entry: str) -> None:
        key = Keys.timeline(session_id)
        with self.client.pipeline(transaction=True) as pipe:
            pipe.rpush(key, entry)
            pipe.ltrim(key, -TIMELINE_LIMIT, -1)
            pipe.execute()

    def webhook(self, event_id: str) -> tuple[str, dict[str, str], int] | None:
        """A stored callback: (kind, params, received at in ms), or None once expired."""
        return _webhook(self.client.hgetall(Keys.webhook(event_id)))

    def webhook_and_session(
        self, event_id: str, session_uuid: str
    ) -> tuple[tuple[str, dict[str, str], int] | None, str | None]:
        """A stored callback and our session for its VTS session, in one round trip."""
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(Keys.webhook(event_id))
            pipe.get(Keys.vts_session(session_uuid))
            raw, owner = pipe.execute()
        return _webhook(raw), (_text(owner) if owner else None)

    def session_for_vts(self, session_uuid: str) -> str | None:
        owner = self.client.get(Keys.vts_session(session_uuid))
        return _text(owner) if owner else None

    def apply_event(self, session_id: str, change: EventChange) -> str:
        """Apply one event's effect exactly once.

        Returns ``duplicate``, ``missing``, ``hold`` (the previous event of the session
        has not been applied and ``change.force`` says to wait for it) or
        ``applied:<status before>:<status after>:<1 if a call between the parties
        ended>:<1 if the app wants notifications>``. Schedules the session's
        reconciliation at ``change.reconcile_at`` when given.
        """
        result = self._apply(
            keys=[
                Keys.session(session_id),
                Keys.applied(session_id),
                Keys.timeline(session_id),
                Keys.event_stats(),
                Keys.schedule(),
                Keys.in_flight(change.session_uuid),
                Keys.arrived(change.session_uuid),
            ],
            args=[
                change.marker,
                change.previous_marker or "",
                str(change.force),
                change.role,
                change.party,
                change.billed,
                change.amount_nanos,
                change.at,
                change.entry,
                CHANNEL,
                session_id,
                Keys.index() + ":status:",
                change.virtual_number or "",
                iso(now()) or "",
                int(change.reconcile_at.timestamp() * 1000) if change.reconcile_at else "",
                change.previous_sequence or "",
            ],
        )
        return _text(result)

    def keep_orphan(self, event_id: str, received_ms: int) -> None:
        """Set aside an event for a session we never created (kept, counted, not lost)."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.zadd(Keys.orphan_events(), {event_id: received_ms})
            pipe.hincrby(Keys.event_stats(), "orphaned", 1)
            pipe.execute()

    def events_in_flight(self, session_uuid: str) -> int:
        """How many of the VTS session's callbacks are stored but not applied yet."""
        return int(self.client.get(Keys.in_flight(session_uuid)) or 0)

    def schedule(self, task: str, session_id: str, due: datetime) -> None:
        """Run ``task`` for the session at ``due`` (one entry per task and session)."""
        self.client.zadd(Keys.schedule(), {f"{task}:{session_id}": int(due.timestamp() * 1000)})

    def unschedule(self, task: str, session_id: str) -> None:
        self.client.zrem(Keys.schedule(), f"{task}:{session_id}")

    def take_due(
        self, moment: datetime, limit: int = 100, lease_ms: int = 60_000
    ) -> list[tuple[str, str]]:
        """The (task, session id) pairs due at ``moment``, leased for ``lease_ms``."""
        due = self._take_due(
            keys=[Keys.schedule()], args=[int(moment.timestamp() * 1000), limit, lease_ms]
        )
        pairs = (_text(entry).partition(":") for entry in due)
        return [(task, session_id) for task, _, session_id in pairs]

    def lead(self, token: str, ttl_ms: int) -> bool:
        """Take or keep the scheduler's lead; only one process holds it at a time."""
        return bool(self._lead(keys=[Keys.scheduler_leader()], args=[token, ttl_ms]))

    def reconcile(self, session_id: str, truth: Mapping[str, int]) -> dict[str, int]:
        """Make the session's counters show ``truth`` (VTS's totals); return what they
        showed before. Events applied later still add to them."""
        args = [item for name in truth for item in (name, truth[name])]
        before = self._reconcile(keys=[Keys.session(session_id)], args=args)
        self.client.publish(CHANNEL, session_id)
        return {name: int(_text(value)) for name, value in zip(truth, before, strict=True)}

    def enqueue(self, message: Outgoing) -> None:
        """Queue a message from a worker (the same two writes dramatiq's enqueue makes)."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(
                Keys.queue_messages(message.queue_name), message.redis_message_id, message.payload
            )
            pipe.rpush(Keys.queue(message.queue_name), message.redis_message_id)
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
        return _text(previous) if previous else None

    def dead_letters(self, queue: str) -> list[tuple[str, float, bytes]]:
        """The queue's dead letters: (redis message id, when it died (epoch s), message)."""
        entries: list[tuple[bytes, float]] = self.client.zrange(  # type: ignore[assignment]
            Keys.dead_letters(queue), 0, -1, withscores=True
        )
        ids = [_text(member) for member, _ in entries]
        payloads: list[bytes | None] = (
            self.client.hmget(Keys.dead_letter_messages(queue), ids) if ids else []  # type: ignore[assignment]
        )
        return [
            (redis_id, score / 1000, payload)
            for redis_id, (_, score), payload in zip(ids, entries, payloads, strict=True)
            if payload is not None
        ]

    def note_dead_letter(self, redis_id: str, error: str) -> None:
        """Why a message was given up (dramatiq's dead letter keeps no final error)."""
        self.client.hset(Keys.dead_letter_notes(), redis_id, error)

    def dead_letter_notes(self, redis_ids: list[str]) -> list[str | None]:
        if not redis_ids:
            return []
        notes: list[bytes | None] = self.client.hmget(  # type: ignore[assignment]
            Keys.dead_letter_notes(), redis_ids
        )
        return [_text(n) if n is not None else None for n in notes]

    def replay_dead_letter(self, queue: str, redis_id: str, message: Outgoing) -> bool:
        """Put ``message`` (the dead letter, renewed) back on ``queue``, atomically."""
        done = self._replay_dead_letter(
            keys=[
                Keys.dead_letters(queue),
                Keys.dead_letter_messages(queue),
                Keys.queue(message.queue_name),
                Keys.queue_messages(message.queue_name),
                Keys.dead_letter_notes(),
            ],
            args=[redis_id, message.redis_message_id, message.payload],
        )
        return bool(done)

    def webhooks_between(self, since_ms: int, until_ms: int | str) -> list[str]:
        """Ids of the stored callbacks received in [since, until] (epoch ms, or "+inf")."""
        found: list[bytes] = self.client.zrangebyscore(  # type: ignore[assignment]
            Keys.webhooks(), since_ms, until_ms
        )
        return [_text(i) for i in found]

    def mark_once(self, key: str, marker: str) -> bool:
        """Add ``marker`` to the set ``key``; False if it was already there."""
        return bool(self.client.sadd(key, marker))

    def count(self, stats: str, field: str, amount: int = 1) -> None:
        self.client.hincrby(stats, field, amount)


# --- Recordings --------------------------------------------------------------------------


class RecordingKeys:
    @staticmethod
    def recording(recording_id: str) -> str:
        return f"{PREFIX}recording:{recording_id}"

    @staticmethod
    def session_recordings(session_id: str) -> str:
        return f"{PREFIX}session:{session_id}:recordings"


# KEYS: recording, session's recordings. ARGV: recording id, now, field, value, ...
# A stored recording is never touched again; a failed one goes back to pending.
# Returns the status it had ('' when it is new).
_UPSERT_RECORDING = """
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'stored' then return status end
if not status then redis.call('HSET', KEYS[1], 'created_at', ARGV[2]) end
redis.call('HSET', KEYS[1], 'status', 'pending', 'updated_at', ARGV[2], unpack(ARGV, 3))
redis.call('HDEL', KEYS[1], 'error')
redis.call('SADD', KEYS[2], ARGV[1])
return status or ''
"""

# KEYS: recording. ARGV: allowed current statuses (space separated), new status, now,
# field, value, ... Returns 'ok', 'missing', or the status that did not allow the change.
_MARK_RECORDING = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if not string.find(' ' .. ARGV[1] .. ' ', ' ' .. status .. ' ', 1, true) then
  return status
end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'updated_at', ARGV[3], unpack(ARGV, 4))
if ARGV[2] == 'stored' then redis.call('HDEL', KEYS[1], 'error') end
return 'ok'
"""


def _recording(raw: Mapping[bytes | str, bytes | str]) -> Recording | None:
    return Recording.from_fields({_text(k): _text(v) for k, v in raw.items()}) if raw else None


def _by_creation(rows: Sequence[Mapping[bytes | str, bytes | str]]) -> list[Recording]:
    recordings = [r for r in map(_recording, rows) if r is not None]
    return sorted(recordings, key=lambda r: (r.created_at, r.id))


class RecordingStore:
    """The workers' view of recordings: one hash per recording, a set per session.

    Every write is idempotent: duplicate and redelivered events map to the same record
    (see :func:`service.recordings.recording_id`), and a stored recording stays stored.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._upsert = client.register_script(_UPSERT_RECORDING)
        self._mark = client.register_script(_MARK_RECORDING)

    def upsert_pending(
        self,
        session_id: str,
        vts_recording_uuid: str,
        fmt: str,
        duration: int | None = None,
    ) -> Recording:
        """Record a completed recording to download; return it as it now stands.

        A new or failed recording becomes ``pending``; a ``stored`` one is returned as is
        (the caller has nothing to do). ``fmt`` is VTS's RecordingFormat (ValueError if
        it is neither mp3 nor wav).
        """
        rec_id = recording_id(vts_recording_uuid)
        fields = {
            "id": rec_id,
            "session_id": session_id,
            "vts_recording_uuid": vts_recording_uuid,
            "format": recording_format(fmt),
            "stored_name": stored_name(rec_id, fmt),
            **({"duration": str(duration)} if duration is not None else {}),
        }
        self._upsert(
            keys=[RecordingKeys.recording(rec_id), RecordingKeys.session_recordings(session_id)],
            args=[rec_id, iso(now()) or "", *_flatten(fields)],
        )
        recording = self.get(rec_id)
        assert recording is not None  # written just above; recordings never expire
        return recording

    def mark_stored(self, rec_id: str, *, size: int, sha256: str, content_type: str) -> bool:
        """The file is in storage; False if the recording is unknown. Idempotent."""
        fields = {"size": str(size), "sha256": sha256, "content_type": content_type}
        return self._set_status(
            rec_id, RecordingStatus.STORED, ("pending", "failed", "stored"), fields
        )

    def mark_failed(self, rec_id: str, error: str) -> bool:
        """Downloading gave up (``error`` is shown to apps: no secrets, no URLs).

        False, and nothing changed, if the recording is unknown or already stored.
        """
        return self._set_status(
            rec_id, RecordingStatus.FAILED, ("pending", "failed"), {"error": error}
        )

    def _set_status(
        self, rec_id: str, to: RecordingStatus, allowed: Sequence[str], fields: Mapping[str, str]
    ) -> bool:
        result = self._mark(
            keys=[RecordingKeys.recording(rec_id)],
            args=[" ".join(allowed), to.value, iso(now()) or "", *_flatten(fields)],
        )
        return _text(result) == "ok"

    def get(self, rec_id: str) -> Recording | None:
        return _recording(self.client.hgetall(RecordingKeys.recording(rec_id)))

    def for_session(self, session_id: str) -> list[Recording]:
        """The session's recordings, oldest first."""
        ids = self.client.smembers(RecordingKeys.session_recordings(session_id))
        with self.client.pipeline(transaction=False) as pipe:
            for rec_id in sorted(_text(i) for i in ids):
                pipe.hgetall(RecordingKeys.recording(rec_id))
            return _by_creation(pipe.execute())


class AsyncRecordingStore:
    """The web's read-only view of recordings."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client

    async def get(self, rec_id: str) -> Recording | None:
        return _recording(await self.client.hgetall(RecordingKeys.recording(rec_id)))

    async def for_session(self, session_id: str) -> list[Recording]:
        """The session's recordings, oldest first."""
        ids = await self.client.smembers(RecordingKeys.session_recordings(session_id))
        async with self.client.pipeline(transaction=False) as pipe:
            for rec_id in sorted(_text(i) for i in ids):
                pipe.hgetall(RecordingKeys.recording(rec_id))
            return _by_creation(await pipe.execute())
