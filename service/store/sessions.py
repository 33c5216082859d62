"""Sessions: the session hash (both parties, status, counters), its timeline, the status
indexes, idempotency records, the VTS session index, the session lock and the changes
waiting for a VTS update.

An ended session and everything listed here are deleted ``SESSION_RETENTION_SECONDS``
after it ended (unless configured otherwise); live ones keep no TTL but are bounded by the
sessions apps keep open.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime

import redis

from service.models import Session, Status, iso, now
from service.store import scripts
from service.store.apps import AppKeys
from service.store.codec import decode_session, decode_str, hash_args, statuses
from service.store.names import PREFIX
from service.store.schedule import ScheduleKeys

# Where every change of a session is published (for the web's watchers).
CHANNEL = PREFIX + "session-changes"
TIMELINE_LIMIT = 1000
# How long an ended session and everything hanging off it are kept, unless configured.
SESSION_RETENTION_SECONDS = 30 * 24 * 3600
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


# Totals of the differences reconciliation corrected, by counter (a hash; bounded).
RECONCILE_STATS = SessionKeys.reconcile_stats()


# KEYS: session, timeline, schedule, session lock ('' when the write is not fenced)
# ARGV: status index prefix, new status, allowed current statuses (space separated),
#       timeline entry or '', channel, session id, timeline limit, purge due (ms) when
#       the new status ends the session, lock owner token, field, value, ...
# Ending a session schedules its purge, in the same write: no ended session is kept
# forever.
TRANSITION = """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return {'missing', ''} end
if KEYS[4] ~= '' and redis.call('GET', KEYS[4]) ~= ARGV[9] then return {'fenced', current} end
if not string.find(' ' .. ARGV[3] .. ' ', ' ' .. current .. ' ', 1, true) then
  return {'skipped', current}
end
local member = redis.call('HGET', KEYS[1], 'index_member')
if #ARGV > 9 then redis.call('HSET', KEYS[1], unpack(ARGV, 10)) end
if ARGV[2] ~= '' and ARGV[2] ~= current then
  redis.call('HSET', KEYS[1], 'status', ARGV[2])
  redis.call('ZREM', ARGV[1] .. current, member)
  redis.call('ZADD', ARGV[1] .. ARGV[2], 0, member)
  if ARGV[2] == 'expired' or ARGV[2] == 'failed' then
    redis.call('ZADD', KEYS[3], ARGV[8], 'purge:' .. ARGV[6])
  end
end
if ARGV[4] ~= '' then
  redis.call('RPUSH', KEYS[2], ARGV[4])
  redis.call('LTRIM', KEYS[2], -tonumber(ARGV[7]), -1)
end
redis.call('PUBLISH', ARGV[5], ARGV[6])
return {'ok', current}
"""

# Sets each counter's adjustment so that counter + adjustment equals VTS's total.
# KEYS: session. ARGV: counter, VTS total, counter, VTS total, ...
# Returns the shown values before, in the same order.
RECONCILE = """
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

# KEYS: lock. ARGV: token, ttl (ms). Extends the lock only if we still hold it.
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

# KEYS: lock. ARGV: token. Deletes the lock only if we still hold it.
UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: vts session claim. ARGV: session id. Returns the owner.
CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then return ARGV[1] end
return redis.call('GET', KEYS[1])
"""


class Sessions:
    """The workers' side of sessions (a mixin of ``Store``): status transitions, create
    attempts, the VTS session claim, the work lock, pending updates, the timeline and
    reconciliation. ``retention`` (seconds) is how long an ended session is kept."""

    client: redis.Redis
    retention: int

    def _init_sessions(self) -> None:
        self._transition = self.client.register_script(TRANSITION)
        self._claim = self.client.register_script(CLAIM)
        self._unlock = self.client.register_script(UNLOCK)
        self._renew = self.client.register_script(RENEW)
        self._reconcile = self.client.register_script(RECONCILE)
        self._finish_update = self.client.register_script(scripts.FINISH_UPDATE)

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
                SessionKeys.session(session_id),
                SessionKeys.timeline(session_id),
                ScheduleKeys.schedule(),
                SessionKeys.session_lock(session_id) if fence else "",
            ],
            args=[
                SessionKeys.index() + ":status:",
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
        result = self._finish_update(
            keys=[
                SessionKeys.pending_update(session_id),
                SessionKeys.update_sent(session_id),
                ScheduleKeys.schedule(),
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
        args = [item for name in truth for item in (name, truth[name])]
        before = self._reconcile(keys=[SessionKeys.session(session_id)], args=args)
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
