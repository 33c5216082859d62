-- KEYS: idempotency ('' when no key was given), session, index, status index, timeline,
-- queue, queue messages, the app's VTS budget, the pending, active and in_progress
-- indexes
-- ARGV: session id, index member, redis message id, payload, timeline entry,
-- fingerprint, ttl, budget limit, budget window (ms), the app's live session cap
-- (0: none), the app's range in the indexes (lowest, highest), field, value, ...
-- The app's live sessions are counted in the status indexes, which every transition,
-- purge and erasure keeps exact: nothing else to keep in step.
-- Returns {'created'|'replay'|'conflict', session id}, {'throttled', ms to wait} or
-- {'full', live sessions}.
--
-- The budget functions (budget.lua) are defined ahead of this file.

if KEYS[1] ~= '' then
  local found = redis.call('HMGET', KEYS[1], 'fingerprint', 'session_id')
  if found[1] then
    if found[1] == ARGV[6] then return {'replay', found[2]} end
    return {'conflict', found[2]}
  end
end
local cap = tonumber(ARGV[10])
if cap > 0 then
  local live = 0
  for i = 9, 11 do live = live + redis.call('ZLEXCOUNT', KEYS[i], ARGV[11], ARGV[12]) end
  if live >= cap then return {'full', tostring(live)} end
end
local now = now_ms()
local wait = budget_wait(KEYS[8], now, tonumber(ARGV[8]), tonumber(ARGV[9]))
if wait > 0 then return {'throttled', tostring(wait)} end
if KEYS[1] ~= '' then
  redis.call('HSET', KEYS[1], 'fingerprint', ARGV[6], 'session_id', ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[7])
end
budget_spend(KEYS[8], now, now, tonumber(ARGV[9]), ARGV[1])
redis.call('HSET', KEYS[2], 'index_member', ARGV[2], unpack(ARGV, 13))
-- The session names its idempotency record, so that purge and erasure can remove it.
if KEYS[1] ~= '' then redis.call('HSET', KEYS[2], 'idempotency_key', KEYS[1]) end
redis.call('ZADD', KEYS[3], 0, ARGV[2])
redis.call('ZADD', KEYS[4], 0, ARGV[2])
redis.call('RPUSH', KEYS[5], ARGV[5])
redis.call('HSET', KEYS[7], ARGV[3], ARGV[4])
redis.call('RPUSH', KEYS[6], ARGV[3])
return {'created', ARGV[1]}
