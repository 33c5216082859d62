"""The Lua scripts: everything that changes several keys together does it in one script,
so a crash can never leave half a change behind. Each says what its KEYS and ARGV are.
The longer ones live in ``.lua`` files beside this module."""

from importlib import resources


def _load(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


APPLY_EVENT = _load("apply_event.lua")

# An app's share of the VTS budget: a sliding window of the VTS requests it caused, a
# sorted set scored by when each request counts (ms of Redis time; a follow-up update may
# count in the future). Prepended to the scripts that spend it.
BUDGET = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- 0 when the app may cause one more VTS request at ``at``, else the ms until it may.
local function budget_wait(key, at, limit, window)
  local from = string.format('(%.0f', at - window)
  local used = redis.call('ZCOUNT', key, from, '+inf')
  if used < limit then return 0 end
  local nth = redis.call('ZRANGEBYSCORE', key, from, '+inf', 'WITHSCORES', 'LIMIT', used - limit, 1)
  return math.max(1, tonumber(nth[2]) + window - at)
end
local function budget_spend(key, now, at, window, member)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('(%.0f', now - window))
  redis.call('ZADD', key, at, member)
  local ttl = at - now + window + 1000
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
end
"""

# KEYS: idempotency ('' when no key was given), session, index, status index, timeline,
#       queue, queue messages, the app's VTS budget
# ARGV: session id, index member, redis message id, payload, timeline entry,
#       fingerprint, ttl, budget limit, budget window (ms), field, value, ...
# Returns {'created'|'replay'|'conflict', session id} or {'throttled', ms to wait}.
CREATE = (
    BUDGET
    + """
if KEYS[1] ~= '' then
  local found = redis.call('HMGET', KEYS[1], 'fingerprint', 'session_id')
  if found[1] then
    if found[1] == ARGV[6] then return {'replay', found[2]} end
    return {'conflict', found[2]}
  end
end
local now = now_ms()
local wait = budget_wait(KEYS[8], now, tonumber(ARGV[8]), tonumber(ARGV[9]))
if wait > 0 then return {'throttled', tostring(wait)} end
if KEYS[1] ~= '' then
  redis.call('HSET', KEYS[1], 'fingerprint', ARGV[6], 'session_id', ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[7])
end
budget_spend(KEYS[8], now, now, tonumber(ARGV[9]), ARGV[1])
redis.call('HSET', KEYS[2], 'index_member', ARGV[2], unpack(ARGV, 10))
-- The session names its idempotency record, so that purge and erasure can remove it.
if KEYS[1] ~= '' then redis.call('HSET', KEYS[2], 'idempotency_key', KEYS[1]) end
redis.call('ZADD', KEYS[3], 0, ARGV[2])
redis.call('ZADD', KEYS[4], 0, ARGV[2])
redis.call('RPUSH', KEYS[5], ARGV[5])
redis.call('HSET', KEYS[7], ARGV[3], ARGV[4])
redis.call('RPUSH', KEYS[6], ARGV[3])
return {'created', ARGV[1]}
"""
)

# KEYS: session, timeline, queue, queue messages, the app's VTS budget
# ARGV: allowed statuses (space separated), timeline entry, redis message id, payload,
#       owner app, budget limit, budget window (ms)
# A session of another app is 'missing'. Returns {'enqueued'|'skipped'|'missing', status}
# or {'throttled', ms to wait}.
ENQUEUE_IF = (
    BUDGET
    + """
local current = redis.call('HGET', KEYS[1], 'status')
if not current or redis.call('HGET', KEYS[1], 'app') ~= ARGV[5] then return {'missing', ''} end
if not string.find(' ' .. ARGV[1] .. ' ', ' ' .. current .. ' ', 1, true) then
  return {'skipped', current}
end
local now = now_ms()
local wait = budget_wait(KEYS[5], now, tonumber(ARGV[6]), tonumber(ARGV[7]))
if wait > 0 then return {'throttled', tostring(wait)} end
budget_spend(KEYS[5], now, now, tonumber(ARGV[7]), ARGV[3])
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[4], ARGV[3], ARGV[4])
redis.call('RPUSH', KEYS[3], ARGV[3])
return {'enqueued', current}
"""
)

# Asks for changes to a session; changes asked while an update is on its way merge into
# it (last writer wins per field), so a burst of them costs one VTS update. VTS updates of
# a session are at least the update interval apart: a first change asked sooner than that
# after the last update is scheduled (schedule entry 'update:<session id>') rather than
# queued. Only a change that starts an update spends the app's budget.
# KEYS: session, timeline, pending update, update sent, queue, queue messages, schedule,
#       the app's VTS budget
# ARGV: owner app, allowed statuses, timeline entry, redis message id, payload, budget
#       limit, budget window (ms), pending ttl (s), timeline limit, schedule member,
#       field, JSON value, ...
# Returns {'merged'|'enqueued'|'scheduled'|'skipped'|'missing', status} or
# {'throttled', ms to wait}.
REQUEST_UPDATE = (
    BUDGET
    + """
local current = redis.call('HGET', KEYS[1], 'status')
if not current or redis.call('HGET', KEYS[1], 'app') ~= ARGV[1] then return {'missing', ''} end
if not string.find(' ' .. ARGV[2] .. ' ', ' ' .. current .. ' ', 1, true) then
  return {'skipped', current}
end
local limit, window = tonumber(ARGV[6]), tonumber(ARGV[7])
local queued = redis.call('HEXISTS', KEYS[3], '~queued') == 1
local now = now_ms()
if not queued then
  local wait = budget_wait(KEYS[8], now, limit, window)
  if wait > 0 then return {'throttled', tostring(wait)} end
end
redis.call('HSET', KEYS[3], '~app', ARGV[1], '~limit', ARGV[6], unpack(ARGV, 11))
redis.call('EXPIRE', KEYS[3], ARGV[8])
redis.call('RPUSH', KEYS[2], ARGV[3])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[9]), -1)
if queued then return {'merged', current} end
redis.call('HSET', KEYS[3], '~queued', '1')
local too_soon = redis.call('PTTL', KEYS[4])
if too_soon > 0 then
  budget_spend(KEYS[8], now, now + too_soon, window, ARGV[4])
  redis.call('ZADD', KEYS[7], now + too_soon, ARGV[10])
  return {'scheduled', current}
end
budget_spend(KEYS[8], now, now, window, ARGV[4])
redis.call('HSET', KEYS[6], ARGV[4], ARGV[5])
redis.call('RPUSH', KEYS[5], ARGV[4])
return {'enqueued', current}
"""
)

# After a VTS update: forgets the changes it sent (those not changed again meanwhile),
# notes when it was sent, and schedules a follow-up for what was asked meanwhile, once
# the interval has passed and the app's budget has room.
# KEYS: pending update, update sent, schedule, the app's VTS budget
# ARGV: interval (ms; 0 when nothing was sent), budget window (ms), schedule member,
#       budget member,
#       field, JSON value sent, ...
# Returns 'done' or 'scheduled'.
FINISH_UPDATE = (
    BUDGET
    + """
for i = 5, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
local interval, window = tonumber(ARGV[1]), tonumber(ARGV[2])
if interval > 0 then redis.call('SET', KEYS[2], '1', 'PX', interval) end
local left = 0
for _, name in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(name, 1, 1) ~= '~' then left = left + 1 end
end
if left == 0 then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[3], ARGV[3])
  return 'done'
end
local now = now_ms()
local limit = tonumber(redis.call('HGET', KEYS[1], '~limit') or '1')
local at = now + interval
at = at + budget_wait(KEYS[4], at, limit, window)
budget_spend(KEYS[4], now, at, window, ARGV[4])
redis.call('ZADD', KEYS[3], at, ARGV[3])
return 'scheduled'
"""
)

# Erases a session's personal data; counters and the timeline stay.
# KEYS: session, timeline, session's recordings, queue, queue messages, event index,
#       the VTS session's callbacks ('' when it has none)
# ARGV: first party masked, second party masked, erased at, timeline entry, channel,
#       session id, redis message id, payload (the job deleting the recordings' files:
#       it names the session, never a number), recording key prefix, callback key prefix
# Returns {'erased' | 'already' | 'missing' | 'live', status}.
ERASE = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing', ''} end
if status ~= 'expired' and status ~= 'failed' then return {'live', status} end
if redis.call('HEXISTS', KEYS[1], 'erased_at') == 1 then return {'already', status} end
redis.call('HSET', KEYS[1], 'first_party', ARGV[1], 'second_party', ARGV[2],
  'metadata', '{}', 'erased_at', ARGV[3], 'updated_at', ARGV[3])
local idempotency = redis.call('HGET', KEYS[1], 'idempotency_key')
if idempotency then
  if redis.call('HGET', idempotency, 'session_id') == ARGV[6] then
    redis.call('DEL', idempotency)
  end
  redis.call('HDEL', KEYS[1], 'idempotency_key')
end
for _, rec_id in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  local rec = ARGV[9] .. rec_id
  redis.call('HSET', rec, 'status', 'deleted', 'updated_at', ARGV[3])
  redis.call('HDEL', rec, 'size', 'sha256', 'content_type', 'error')
end
if KEYS[7] ~= '' then
  for _, event_id in ipairs(redis.call('SMEMBERS', KEYS[7])) do
    redis.call('DEL', ARGV[10] .. event_id)
    redis.call('ZREM', KEYS[6], event_id)
  end
  redis.call('DEL', KEYS[7])
end
redis.call('RPUSH', KEYS[2], ARGV[4])
redis.call('HSET', KEYS[5], ARGV[7], ARGV[8])
redis.call('RPUSH', KEYS[4], ARGV[7])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return {'erased', status}
"""
