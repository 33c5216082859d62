-- Deletes one recording: it stays listed as 'deleted', so that a late or replayed event
-- does not bring it back, and its file's deletion is queued in the same write.
--
-- KEYS[1] the recording (hash)  KEYS[2] its session's timeline (list)
-- KEYS[3] the queue (list)      KEYS[4] the queue's messages (hash)
--
-- ARGV[1] one JSON object:
--   now                  the time now (ISO 8601)
--   entry                the timeline entry
--   message_id, payload  the queued message's redis id and body (it names the
--                        recording, never a number)
--
-- Returns 'deleted', 'missing' or 'already'.

local recording_key, timeline_key, queue_key, messages_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local a = cjson.decode(ARGV[1])

local status = redis.call('HGET', recording_key, 'status')
if not status then return 'missing' end
if status == 'deleted' then return 'already' end
redis.call('HSET', recording_key, 'status', 'deleted', 'updated_at', a.now)
redis.call('HDEL', recording_key, 'size', 'sha256', 'content_type', 'error')
redis.call('RPUSH', timeline_key, a.entry)
redis.call('HSET', messages_key, a.message_id, a.payload)
redis.call('RPUSH', queue_key, a.message_id)
return 'deleted'
