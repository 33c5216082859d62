-- After a VTS update: forgets the changes it sent (those not changed again meanwhile),
-- notes when it was sent, and schedules a follow-up for what was asked meanwhile, once
-- the interval has passed and the app's budget has room.
--
-- The budget functions (budget.lua) are defined ahead of this file.
--
-- KEYS[1] the session's pending update (hash: field -> JSON value; '~app', '~limit',
--         '~queued')
-- KEYS[2] its update sent (string with a TTL: the update interval)
-- KEYS[3] the timer schedule (zset)  KEYS[4] the app's VTS budget (zset)
--
-- ARGV[1] one JSON object:
--   interval         the update interval (ms; 0 when nothing was sent)
--   budget_window    (ms)
--   timer            the schedule's member for the follow-up
--   budget_member    the follow-up's entry in the budget
--   sent             {field: JSON value sent}
--
-- Returns 'done' or 'scheduled'.

local pending_key, sent_key, schedule_key, budget_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local a = cjson.decode(ARGV[1])

for name, value in pairs(a.sent) do
  if redis.call('HGET', pending_key, name) == value then redis.call('HDEL', pending_key, name) end
end
if a.interval > 0 then redis.call('SET', sent_key, '1', 'PX', a.interval) end
local left = 0
for _, name in ipairs(redis.call('HKEYS', pending_key)) do
  if string.sub(name, 1, 1) ~= '~' then left = left + 1 end
end
if left == 0 then
  redis.call('DEL', pending_key)
  redis.call('ZREM', schedule_key, a.timer)
  return 'done'
end
local now = now_ms()
local limit = tonumber(redis.call('HGET', pending_key, '~limit') or '1')
local at = now + a.interval
at = at + budget_wait(budget_key, at, limit, a.budget_window)
budget_spend(budget_key, now, at, a.budget_window, a.budget_member)
redis.call('ZADD', schedule_key, at, a.timer)
return 'scheduled'
