-- Registers a completed recording to download, or takes up a failed one again. A stored
-- or deleted recording is never touched again. Nothing is written when the session is
-- gone (purged) or erased, so nothing outlives it or undoes its erasure.
--
-- KEYS[1] the recording (hash)  KEYS[2] the session's recordings (set)  KEYS[3] the session
-- ARGV[1] the recording id  ARGV[2] now (ISO 8601)  ARGV[3...] field, value, ...
--
-- Returns the status it had ('' when it is new), or 'missing'.

local owner = redis.call('HMGET', KEYS[3], 'status', 'erased_at')
if not owner[1] or owner[2] then return 'missing' end
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'stored' or status == 'deleted' then return status end
if not status then redis.call('HSET', KEYS[1], 'created_at', ARGV[2]) end
redis.call('HSET', KEYS[1], 'status', 'pending', 'updated_at', ARGV[2], unpack(ARGV, 3))
redis.call('HDEL', KEYS[1], 'error')
redis.call('SADD', KEYS[2], ARGV[1])
return status or ''
