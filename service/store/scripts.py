"""The Lua scripts: everything that changes several keys together does it in one script,
so a crash can never leave half a change behind. Each says what its KEYS and ARGV are.
The longer ones live in ``.lua`` files beside this module."""

from importlib import resources


def _load(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


APPLY_EVENT = _load("apply_event.lua")

# KEYS: idempotency ('' when no key was given), session, index, status index, timeline,
#       queue, queue messages
# ARGV: session id, index member, redis message id, payload, timeline entry,
#       fingerprint, ttl, field, value, ...
CREATE = """
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

# KEYS: session, timeline, session lock ('' when the write is not fenced)
# ARGV: status index prefix, new status, allowed current statuses (space separated),
#       timeline entry or '', channel, session id, timeline limit, lock owner token,
#       field, value, ...
TRANSITION = """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return {'missing', ''} end
if KEYS[3] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[8] then return {'fenced', current} end
if not string.find(' ' .. ARGV[3] .. ' ', ' ' .. current .. ' ', 1, true) then
  return {'skipped', current}
end
local member = redis.call('HGET', KEYS[1], 'index_member')
if #ARGV > 8 then redis.call('HSET', KEYS[1], unpack(ARGV, 9)) end
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
ENQUEUE_IF = """
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
#       the VTS session's events in flight ('' for recordings; a zset of event id ->
#       received ms, which the apply script empties)
# ARGV: event id, retention (s), received (ms), redis message id, payload,
#       sequence number (unused, kept for the argument layout), field, value, ...
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
redis.call('HSET', KEYS[4], ARGV[4], ARGV[5])
redis.call('RPUSH', KEYS[3], ARGV[4])
redis.call('HINCRBY', KEYS[6], 'accepted', 1)
if KEYS[7] ~= '' then
  redis.call('ZADD', KEYS[7], ARGV[3], ARGV[1])
  redis.call('EXPIRE', KEYS[7], 3600)
end
return 'accepted'
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
# KEYS: dead letters, dead letter messages, queue, queue messages, dead letter notes
# ARGV: dead letter id, new id, new payload. Returns 1 if it was there.
REPLAY_DEAD_LETTER = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
redis.call('HSET', KEYS[4], ARGV[2], ARGV[3])
redis.call('RPUSH', KEYS[3], ARGV[2])
return 1
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


# KEYS: recording, session's recordings. ARGV: recording id, now, field, value, ...
# A stored recording is never touched again; a failed one goes back to pending.
# Returns the status it had ('' when it is new).
UPSERT_RECORDING = """
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
