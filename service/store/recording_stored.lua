-- Marks a recording stored and writes what that implies in the same step: its entry on
-- the session's timeline (once, when it becomes stored) and the notification that tells
-- the app (recorded once: a redelivery finds it). A deleted recording (by the app, or by
-- the session's erasure) or a purged one is never marked: its file must not outlive it.
--
-- RECORD_NOTIFICATION (notify.lua) is defined ahead of this file.
--
-- KEYS[1] the recording (hash)  KEYS[2] its session (hash)  KEYS[3] the session's timeline
-- ARGV[1] one JSON object:
--   recording_id, session_id
--   fields           {name: value}: size, sha256, content_type
--   entry            the timeline entry
--   timeline_limit
--   now_ms, now      the time now (epoch ms; ISO 8601)
--
-- Returns 'stored' (made stored now), 'already' (it was), or 'missing' (unknown or
-- deleted: nothing written).

local recording_key, session_key, timeline_key = KEYS[1], KEYS[2], KEYS[3]
local a = cjson.decode(ARGV[1])
local status = redis.call('HGET', recording_key, 'status')
if not status or status == 'deleted' then return 'missing' end
if status == 'stored' then
  record_notification(session_key, a.session_id, 'session.recording_stored', a.recording_id,
    a.now_ms, a.now)
  return 'already'
end
for name, value in pairs(a.fields) do redis.call('HSET', recording_key, name, value) end
redis.call('HSET', recording_key, 'status', 'stored', 'updated_at', a.now)
redis.call('HDEL', recording_key, 'error')
redis.call('RPUSH', timeline_key, a.entry)
redis.call('LTRIM', timeline_key, -tonumber(a.timeline_limit), -1)
record_notification(session_key, a.session_id, 'session.recording_stored', a.recording_id,
  a.now_ms, a.now)
return 'stored'
