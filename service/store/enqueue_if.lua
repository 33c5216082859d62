-- KEYS: session, timeline, queue, queue messages, the app's VTS budget
-- ARGV: allowed statuses (space separated), timeline entry, redis message id, payload,
-- owner app, budget limit, budget window (ms)
-- A session of another app is 'missing'. Returns {'enqueued'|'skipped'|'missing', status}
-- or {'throttled', ms to wait}.
--
-- The budget functions (budget.lua) are defined ahead of this file.

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
