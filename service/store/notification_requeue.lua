-- KEYS: record, schedule, pending index. ARGV: the app it must belong to ('' for any),
-- 'any' or 'undelivered' (which states may be queued again), now (ISO), now (epoch ms),
-- timer member, notification id.
-- Queues the notification's next attempt now, its retry schedule from the start; the
-- record keeps its id (the webhook-id) and its attempts.
-- Returns 'queued', 'skipped' (delivered or discarded, when 'undelivered') or 'missing'
-- (gone, or another app's).

local found = redis.call('HMGET', KEYS[1], 'app', 'state')
if not found[2] then return 'missing' end
if ARGV[1] ~= '' and found[1] ~= ARGV[1] then return 'missing' end
if ARGV[2] == 'undelivered' and (found[2] == 'delivered' or found[2] == 'discarded') then
  return 'skipped'
end
redis.call('HSET', KEYS[1], 'state', 'pending', 'next_attempt_at', ARGV[3], 'failures', 0)
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[6])
return 'queued'
