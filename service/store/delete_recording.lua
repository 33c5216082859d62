-- Deletes one recording: it stays listed as 'deleted', so that a late or replayed event
-- does not bring it back, and its file's deletion is queued in the same write.
--
-- KEYS[1] the recording (hash)  KEYS[2] its session's timeline ('' when unknown)
-- KEYS[3] the queue (list)      KEYS[4] the queue's messages (hash)
-- ARGV[1] now (ISO 8601)  ARGV[2] the timeline entry
-- ARGV[3] the message's redis id  ARGV[4] its payload (names the recording, no number)
--
-- Returns 'deleted', 'missing' or 'already'.

local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status == 'deleted' then return 'already' end
redis.call('HSET', KEYS[1], 'status', 'deleted', 'updated_at', ARGV[1])
redis.call('HDEL', KEYS[1], 'size', 'sha256', 'content_type', 'error')
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[4], ARGV[3], ARGV[4])
redis.call('RPUSH', KEYS[3], ARGV[3])
return 'deleted'
