-- Asks for changes to a session; changes asked while an update is on its way merge into
-- it (last writer wins per field), so a burst of them costs one VTS update. VTS updates of
-- a session are at least the update interval apart: a first change asked sooner than that
-- after the last update is scheduled (the schedule's timer) rather than queued. Only a
-- change that starts an update spends the app's budget.
--
-- The budget functions (budget.lua) are defined ahead of this file.
--
-- KEYS[1] the session (hash)         KEYS[2] its timeline (list)
-- KEYS[3] its pending update (hash: field -> JSON value; '~app', '~limit', '~queued')
-- KEYS[4] its update sent (string with a TTL: the update interval)
-- KEYS[5] the queue (list)           KEYS[6] the queue's messages (hash)
-- KEYS[7] the timer schedule (zset)  KEYS[8] the app's VTS budget (zset)
--
-- ARGV[1] one JSON object:
--   app                        the app that asks (the session's owner)
--   allowed                    the statuses the session may be in (list)
--   entry                      the timeline entry
--   message_id, payload        the queued message's redis id and body
--   budget_limit, budget_window (ms)
--   pending_ttl                how long the pending update is kept (s)
--   timeline_limit
--   timer                      the schedule's member for the update
--   changes                    {field: JSON value}
--
-- Returns {'merged'|'enqueued'|'scheduled'|'skipped'|'missing', status} or
-- {'throttled', ms to wait}.

local session_key, timeline_key, pending_key, sent_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local queue_key, messages_key, schedule_key, budget_key = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local a = cjson.decode(ARGV[1])

local current = redis.call('HGET', session_key, 'status')
if not current or redis.call('HGET', session_key, 'app') ~= a.app then return {'missing', ''} end
local allowed = false
for _, status in ipairs(a.allowed) do
  if status == current then allowed = true end
end
if not allowed then return {'skipped', current} end
local queued = redis.call('HEXISTS', pending_key, '~queued') == 1
local now = now_ms()
if not queued then
  local wait = budget_wait(budget_key, now, a.budget_limit, a.budget_window)
  if wait > 0 then return {'throttled', tostring(wait)} end
end
local fields = {'~app', a.app, '~limit', a.budget_limit}
for name, value in pairs(a.changes) do
  fields[#fields + 1] = name
  fields[#fields + 1] = value
end
redis.call('HSET', pending_key, unpack(fields))
redis.call('EXPIRE', pending_key, a.pending_ttl)
redis.call('RPUSH', timeline_key, a.entry)
redis.call('LTRIM', timeline_key, -a.timeline_limit, -1)
if queued then return {'merged', current} end
redis.call('HSET', pending_key, '~queued', '1')
local too_soon = redis.call('PTTL', sent_key)
if too_soon > 0 then
  budget_spend(budget_key, now, now + too_soon, a.budget_window, a.message_id)
  redis.call('ZADD', schedule_key, now + too_soon, a.timer)
  return {'scheduled', current}
end
budget_spend(budget_key, now, now, a.budget_window, a.message_id)
redis.call('HSET', messages_key, a.message_id, a.payload)
redis.call('RPUSH', queue_key, a.message_id)
return {'enqueued', current}
