-- Erases an ended session's personal data; counters and the timeline stay. Its
-- recordings become 'deleted' (their files' deletion is queued) and its stored callbacks
-- go. Its notifications go too (records, attempts, index entries, timers): they told of
-- the session's calls.
--
-- KEYS[1] the session (hash)             KEYS[2] its timeline (list)
-- KEYS[3] its recordings (set)           KEYS[4] the queue (list)
-- KEYS[5] the queue's messages (hash)    KEYS[6] the event index (zset)
-- KEYS[7] the VTS session's callbacks (set; '' when it has none)
-- KEYS[8] the session's notifications (zset)
-- KEYS[9] the timer schedule (zset)      KEYS[10] the pending notifications (zset)
--
-- ARGV[1] one JSON object:
--   session_id
--   first_party, second_party  the parties, masked
--   at                         the time now (ISO 8601): erased_at, updated_at
--   entry                      the timeline entry
--   channel                    where the change is published
--   message_id, payload        the job deleting the recordings' files (its payload names
--                              the session, never a number)
--   recording_prefix, callback_prefix, notification_prefix, attempts_prefix,
--   app_notifications_prefix   the keys of a recording, a stored callback, a
--                              notification, its attempts and an app's notification
--                              index, before the id (or the app's name)
--
-- Returns {'erased'|'already'|'missing'|'live', status}.

local session_key, timeline_key, recordings_key = KEYS[1], KEYS[2], KEYS[3]
local queue_key, messages_key, events_key, callbacks_key = KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local notifications_key, schedule_key, pending_key = KEYS[8], KEYS[9], KEYS[10]
local a = cjson.decode(ARGV[1])

local status = redis.call('HGET', session_key, 'status')
if not status then return {'missing', ''} end
if status ~= 'expired' and status ~= 'failed' then return {'live', status} end
if redis.call('HEXISTS', session_key, 'erased_at') == 1 then return {'already', status} end
redis.call('HSET', session_key, 'first_party', a.first_party, 'second_party', a.second_party,
  'metadata', '{}', 'erased_at', a.at, 'updated_at', a.at)
local idempotency = redis.call('HGET', session_key, 'idempotency_key')
if idempotency then
  if redis.call('HGET', idempotency, 'session_id') == a.session_id then
    redis.call('DEL', idempotency)
  end
  redis.call('HDEL', session_key, 'idempotency_key')
end
for _, rec_id in ipairs(redis.call('SMEMBERS', recordings_key)) do
  local rec = a.recording_prefix .. rec_id
  redis.call('HSET', rec, 'status', 'deleted', 'updated_at', a.at)
  redis.call('HDEL', rec, 'size', 'sha256', 'content_type', 'error')
end
if callbacks_key ~= '' then
  for _, event_id in ipairs(redis.call('SMEMBERS', callbacks_key)) do
    redis.call('DEL', a.callback_prefix .. event_id)
    redis.call('ZREM', events_key, event_id)
  end
  redis.call('DEL', callbacks_key)
end
for _, id in ipairs(redis.call('ZRANGE', notifications_key, 0, -1)) do
  local record = a.notification_prefix .. id
  local app = redis.call('HGET', record, 'app')
  if app then redis.call('ZREM', a.app_notifications_prefix .. app, id) end
  redis.call('DEL', record, a.attempts_prefix .. id)
  redis.call('ZREM', schedule_key, 'notify:' .. id)
  redis.call('ZREM', pending_key, id)
end
redis.call('DEL', notifications_key)
redis.call('RPUSH', timeline_key, a.entry)
redis.call('HSET', messages_key, a.message_id, a.payload)
redis.call('RPUSH', queue_key, a.message_id)
redis.call('PUBLISH', a.channel, a.session_id)
return {'erased', status}
