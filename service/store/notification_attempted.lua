-- KEYS: record, attempts, schedule, pending index. ARGV: attempt (JSON; '' for none: given
-- up unattempted), state, next attempt at (ISO, '' when none), next attempt at (epoch ms,
-- '' when none), timer member, attempts kept, failures, notification id.
-- Notes an attempt and what follows it, unless the record is gone (purged, erased).
-- Returns 1 when noted, 0 when the record is gone.

if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[1] ~= '' then
  redis.call('RPUSH', KEYS[2], ARGV[1])
  redis.call('LTRIM', KEYS[2], -tonumber(ARGV[6]), -1)
end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'next_attempt_at', ARGV[3], 'failures', ARGV[7])
if ARGV[4] == '' then
  redis.call('ZREM', KEYS[3], ARGV[5])
else
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[5])
end
if ARGV[2] ~= 'pending' then redis.call('ZREM', KEYS[4], ARGV[8]) end
return 1
