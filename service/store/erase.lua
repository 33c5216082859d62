-- Erases a session's personal data; counters and the timeline stay. Its notifications go
-- (records, attempts, index entries, timers): they told of the session's calls.
-- KEYS: session, timeline, session's recordings, queue, queue messages, event index,
-- the VTS session's callbacks ('' when it has none), the session's notifications,
-- the timer schedule, the pending notifications
-- ARGV: first party masked, second party masked, erased at, timeline entry, channel,
-- session id, redis message id, payload (the job deleting the recordings' files:
-- it names the session, never a number), recording key prefix, callback key prefix,
-- notification key prefix, attempts key prefix, app notifications key prefix
-- Returns {'erased' | 'already' | 'missing' | 'live', status}.

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
for _, id in ipairs(redis.call('ZRANGE', KEYS[8], 0, -1)) do
  local app = redis.call('HGET', ARGV[11] .. id, 'app')
  if app then redis.call('ZREM', ARGV[13] .. app, id) end
  redis.call('DEL', ARGV[11] .. id, ARGV[12] .. id)
  redis.call('ZREM', KEYS[9], 'notify:' .. id)
  redis.call('ZREM', KEYS[10], id)
end
redis.call('DEL', KEYS[8])
redis.call('RPUSH', KEYS[2], ARGV[4])
redis.call('HSET', KEYS[5], ARGV[7], ARGV[8])
redis.call('RPUSH', KEYS[4], ARGV[7])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return {'erased', status}
