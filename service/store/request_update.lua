-- Asks for changes to a session; changes asked while an update is on its way merge into
-- it (last writer wins per field), so a burst of them costs one VTS update. VTS updates of
-- a session are at least the update interval apart: a first change asked sooner than that
-- after the last update is scheduled (schedule entry 'update:<session id>') rather than
-- queued. Only a change that starts an update spends the app's budget.
-- KEYS: session, timeline, pending update, update sent, queue, queue messages, schedule,
-- the app's VTS budget
-- ARGV: owner app, allowed statuses, timeline entry, redis message id, payload, budget
-- limit, budget window (ms), pending ttl (s), timeline limit, schedule member,
-- field, JSON value, ...
-- Returns {'merged'|'enqueued'|'scheduled'|'skipped'|'missing', status} or
-- {'throttled', ms to wait}.
--
-- The budget functions (budget.lua) are defined ahead of this file.

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
