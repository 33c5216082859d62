-- Registers a completed recording to download, or takes up a failed one again. A stored
-- or deleted recording is never touched again. Nothing is written when the session is
-- gone (purged) or erased, so nothing outlives it or undoes its erasure.
--
-- KEYS[1] the recording (hash)  KEYS[2] the session's recordings (set)
-- KEYS[3] the session (hash)
--
-- ARGV[1] one JSON object:
--   recording_id
--   now              the time now (ISO 8601)
--   fields           {name: value}: the recording
--
-- Returns the status it had ('' when it is new), or 'missing'.

local recording_key, recordings_key, session_key = KEYS[1], KEYS[2], KEYS[3]
local a = cjson.decode(ARGV[1])

local owner = redis.call('HMGET', session_key, 'status', 'erased_at')
if not owner[1] or owner[2] then return 'missing' end
local status = redis.call('HGET', recording_key, 'status')
if status == 'stored' or status == 'deleted' then return status end
if not status then redis.call('HSET', recording_key, 'created_at', a.now) end
local fields = {'status', 'pending', 'updated_at', a.now}
for name, value in pairs(a.fields) do
  fields[#fields + 1] = name
  fields[#fields + 1] = value
end
redis.call('HSET', recording_key, unpack(fields))
redis.call('HDEL', recording_key, 'error')
redis.call('SADD', recordings_key, a.recording_id)
return status or ''
