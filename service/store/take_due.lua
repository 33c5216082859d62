-- Takes the timers that are due and leases them: each comes due again after the lease
-- unless its task reschedules or removes it, so a scheduler that dies after taking
-- timers loses none.
--
-- KEYS[1] the timer schedule (zset: '<task>:<target>' scored by when it is due, epoch ms)
-- ARGV[1] now (epoch ms)  ARGV[2] the most to take  ARGV[3] the lease (ms)
--
-- Returns the members taken.

local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, entry in ipairs(due) do
  redis.call('ZADD', KEYS[1], ARGV[1] + ARGV[3], entry)
end
return due
