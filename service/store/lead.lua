-- Takes or keeps the scheduler's lead: one process at a time holds it, for a TTL it
-- renews while alive. The holder renews only once half the TTL has gone: asked every
-- tick, a renewal each time would be a write (replicated, appended to the AOF) several
-- times a second for nothing.
--
-- KEYS[1] the leader key (string: the holder's token)
-- ARGV[1] our token  ARGV[2] the TTL (ms)
--
-- Returns 1 when we hold the lead, 0 when another process does.

local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  if redis.call('PTTL', KEYS[1]) <= ARGV[2] / 2 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
