-- Moves a dead letter back onto its queue as a fresh message (retries start again).
-- KEYS: dead letters, dead letter messages, queue, queue messages, dead letter note
-- ARGV: dead letter id, new id, new payload. Returns 1 if it was there.

if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[5])
redis.call('HSET', KEYS[4], ARGV[2], ARGV[3])
redis.call('RPUSH', KEYS[3], ARGV[2])
return 1
