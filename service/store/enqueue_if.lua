-- Queues a job on a session if the session is the app's and its status allows it,
-- spending one of the app's VTS budget. A session of another app is 'missing'.
--
-- The budget functions (budget.lua) are defined ahead of this file.
--
-- KEYS[1] the session (hash)  KEYS[2] its timeline (list)
-- KEYS[3] the queue (list)    KEYS[4] the queue's messages (hash)
-- KEYS[5] the app's VTS budget (zset)
--
-- ARGV[1] one JSON object:
--   app                        the app that asks (the session's owner)
--   allowed                    the statuses the session may be in (list)
--   entry                      the timeline entry
--   message_id, payload        the queued message's redis id and body
--   budget_limit, budget_window (ms)
--
-- Returns {'enqueued'|'skipped'|'missing', status} or {'throttled', ms to wait}.

local session_key, timeline_key, queue_key = KEYS[1], KEYS[2], KEYS[3]
local messages_key, budget_key = KEYS[4], KEYS[5]
local a = cjson.decode(ARGV[1])

local current = redis.call('HGET', session_key, 'status')
if not current or redis.call('HGET', session_key, 'app') ~= a.app then return {'missing', ''} end
local allowed = false
for _, status in ipairs(a.allowed) do
  if status == current then allowed = true end
end
if not allowed then return {'skipped', current} end
local now = now_ms()
local wait = budget_wait(budget_key, now, a.budget_limit, a.budget_window)
if wait > 0 then return {'throttled', tostring(wait)} end
budget_spend(budget_key, now, now, a.budget_window, a.message_id)
redis.call('RPUSH', timeline_key, a.entry)
redis.call('HSET', messages_key, a.message_id, a.payload)
redis.call('RPUSH', queue_key, a.message_id)
return {'enqueued', current}
