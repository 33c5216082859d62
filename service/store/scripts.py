"""The Lua scripts: everything that changes several keys together does it in one script,
so a crash can never leave half a change behind. Each says what its KEYS and ARGV are."""

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

# KEYS: session, timeline, schedule
# ARGV: status index prefix, new status, allowed current statuses (space separated),
#       timeline entry or '', channel, session id, timeline limit, purge due (ms) when
#       the new status ends the session, field, value, ...
# Ending a session schedules its purge, in the same write: no ended session is kept
# forever.
TRANSITION = """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return {'missing', ''} end
if not string.find(' ' .. ARGV[3] .. ' ', ' ' .. current .. ' ', 1, true) then
  return {'skipped', current}
end
local member = redis.call('HGET', KEYS[1], 'index_member')
if #ARGV > 8 then redis.call('HSET', KEYS[1], unpack(ARGV, 9)) end
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

# KEYS: nonce ('' when none), event, queue, queue messages, event index, stats,
#       the VTS session's in-flight count and arrived sequence numbers ('' for recordings),
#       the VTS session's callbacks
# ARGV: event id, retention (s), received (ms), redis message id, payload,
#       sequence number ('' none), field, value, ...
# The event index keeps what is younger than the retention: it is trimmed as it grows.
INGEST = """
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
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', '(' .. (ARGV[3] - ARGV[2] * 1000))
redis.call('SADD', KEYS[9], ARGV[1])
redis.call('EXPIRE', KEYS[9], ARGV[2])
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
#       14 updated_at, 15 reconcile due (ms, '' for none), 16 previous sequence number,
#       17 purge due (ms) should the event end the session
# Force: 0 wait for the previous event; 1 go on unless it has arrived; 2 go on.
# Roles: leg (a leg's progress), leg_end, leg_end_complete (the family without a parties
# event), parties_hangup, timeout, number, other.
APPLY_EVENT = """
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
  if new_status == 'expired' then redis.call('ZADD', KEYS[5], ARGV[17], 'purge:' .. ARGV[11]) end
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
TAKE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, entry in ipairs(due) do
  redis.call('ZADD', KEYS[1], ARGV[1] + ARGV[3], entry)
end
return due
"""

# KEYS: leader. ARGV: token, ttl (ms). Take or keep the lead; true if we hold it.
LEAD = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not holder then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0
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

# Moves a dead letter back onto its queue as a fresh message (retries start again).
# KEYS: dead letters, dead letter messages, queue, queue messages, dead letter note
# ARGV: dead letter id, new id, new payload. Returns 1 if it was there.
REPLAY_DEAD_LETTER = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[5])
redis.call('HSET', KEYS[4], ARGV[2], ARGV[3])
redis.call('RPUSH', KEYS[3], ARGV[2])
return 1
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


# KEYS: recording, session's recordings, session. ARGV: recording id, now, field, value, ...
# A stored or deleted recording is never touched again; a failed one goes back to pending.
# Returns the status it had ('' when it is new), or 'missing' when the session is gone
# (purged) or erased: nothing is written then, so nothing outlives it or undoes erasure.
UPSERT_RECORDING = """
local owner = redis.call('HMGET', KEYS[3], 'status', 'erased_at')
if not owner[1] or owner[2] then return 'missing' end
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'stored' or status == 'deleted' then return status end
if not status then redis.call('HSET', KEYS[1], 'created_at', ARGV[2]) end
redis.call('HSET', KEYS[1], 'status', 'pending', 'updated_at', ARGV[2], unpack(ARGV, 3))
redis.call('HDEL', KEYS[1], 'error')
redis.call('SADD', KEYS[2], ARGV[1])
return status or ''
"""

# KEYS: recording. ARGV: allowed current statuses (space separated), new status, now,
# field, value, ... Returns 'ok', 'missing', or the status that did not allow the change.
MARK_RECORDING = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if not string.find(' ' .. ARGV[1] .. ' ', ' ' .. status .. ' ', 1, true) then
  return status
end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'updated_at', ARGV[3], unpack(ARGV, 4))
if ARGV[2] == 'stored' then redis.call('HDEL', KEYS[1], 'error') end
return 'ok'
"""

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

# Deletes one recording: it stays listed as 'deleted', so that a late or replayed event
# does not bring it back, and its file's deletion is queued in the same write.
# KEYS: recording, timeline of its session ('' when unknown), queue, queue messages
# ARGV: now, timeline entry, redis message id, payload
# Returns 'deleted', 'missing' or 'already'.
DELETE_RECORDING = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status == 'deleted' then return 'already' end
redis.call('HSET', KEYS[1], 'status', 'deleted', 'updated_at', ARGV[1])
redis.call('HDEL', KEYS[1], 'size', 'sha256', 'content_type', 'error')
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[4], ARGV[3], ARGV[4])
redis.call('RPUSH', KEYS[3], ARGV[3])
return 'deleted'
"""
