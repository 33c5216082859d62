-- Notes an attempt at a notification and what follows it, unless the record is gone
-- (purged, erased).
--
-- KEYS[1] the notification (hash)   KEYS[2] its attempts (list)
-- KEYS[3] the timer schedule (zset) KEYS[4] the pending notifications (zset)
--
-- ARGV[1] one JSON object:
--   notification_id
--   attempt          optional: the attempt (JSON); absent when it was given up
--                    unattempted
--   attempts_kept    how many attempts the list keeps
--   state, failures  the notification's new state and count of failures
--   next_attempt_at  when its next attempt is due (ISO 8601; '' when none)
--   due_ms           optional: the same in epoch ms; absent when none
--   timer            the schedule's member for its next attempt
--
-- Returns 1 when noted, 0 when the record is gone.

local record_key, attempts_key, schedule_key, pending_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local a = cjson.decode(ARGV[1])

if redis.call('EXISTS', record_key) == 0 then return 0 end
if a.attempt ~= nil then
  redis.call('RPUSH', attempts_key, a.attempt)
  redis.call('LTRIM', attempts_key, -a.attempts_kept, -1)
end
redis.call('HSET', record_key, 'state', a.state, 'next_attempt_at', a.next_attempt_at,
  'failures', a.failures)
if a.due_ms == nil then
  redis.call('ZREM', schedule_key, a.timer)
else
  redis.call('ZADD', schedule_key, a.due_ms, a.timer)
end
if a.state ~= 'pending' then redis.call('ZREM', pending_key, a.notification_id) end
return 1
