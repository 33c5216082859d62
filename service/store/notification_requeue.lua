-- Queues a notification's next attempt now, its retry schedule from the start; the
-- record keeps its id (the webhook-id) and its attempts.
--
-- KEYS[1] the notification (hash)  KEYS[2] the timer schedule (zset)
-- KEYS[3] the pending notifications (zset)
--
-- ARGV[1] one JSON object:
--   notification_id
--   app              the app it must belong to ('' for any)
--   undelivered      true: only one not delivered nor discarded is queued again
--   now_ms, now      the time now (epoch ms; ISO 8601)
--   timer            the schedule's member for its next attempt
--
-- Returns 'queued', 'skipped' (delivered or discarded, when undelivered) or 'missing'
-- (gone, or another app's).

local record_key, schedule_key, pending_key = KEYS[1], KEYS[2], KEYS[3]
local a = cjson.decode(ARGV[1])

local found = redis.call('HMGET', record_key, 'app', 'state')
if not found[2] then return 'missing' end
if a.app ~= '' and found[1] ~= a.app then return 'missing' end
if a.undelivered and (found[2] == 'delivered' or found[2] == 'discarded') then
  return 'skipped'
end
redis.call('HSET', record_key, 'state', 'pending', 'next_attempt_at', a.now, 'failures', 0)
redis.call('ZADD', schedule_key, a.now_ms, a.timer)
redis.call('ZADD', pending_key, a.now_ms, a.notification_id)
return 'queued'
