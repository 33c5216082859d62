-- After a VTS update: forgets the changes it sent (those not changed again meanwhile),
-- notes when it was sent, and schedules a follow-up for what was asked meanwhile, once
-- the interval has passed and the app's budget has room.
-- KEYS: pending update, update sent, schedule, the app's VTS budget
-- ARGV: interval (ms; 0 when nothing was sent), budget window (ms), schedule member,
-- budget member,
-- field, JSON value sent, ...
-- Returns 'done' or 'scheduled'.
--
-- The budget functions (budget.lua) are defined ahead of this file.

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
