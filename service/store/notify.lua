-- Records a notification to the app and schedules its first attempt: included by every
-- script that changes a session in a way the app is told of, so that the change and its
-- notification are one write (a worker killed after the change cannot lose it, and a
-- redelivered change, finding itself made, writes nothing twice).
--
-- NOTIFICATION_KEYS (defined ahead of this file by service/store/notifications.py):
--   record    the prefix of a notification's hash, before its id
--   attempts  the prefix of a notification's attempt list, before its id
--   session   a session's notification index (zset), with '{id}' for the session id
--   app       the prefix of an app's notification index (zset by creation), before its name
--   pending   the index of pending notifications (zset by creation)
--   schedule  the timer schedule (zset): 'notify:<id>' is due at the next attempt
--
-- record_notification(session_key, session_id, kind, tag, now_ms, now_iso) does nothing
-- when the session has no callback_url, and nothing twice for one id (the id is the
-- session id, the kind and the tag: the same on every redelivery). Returns the id or
-- false. The indexes' entries go with the session's purge or erasure.

local function notification_key(template, id)
  local at = string.find(template, '{id}', 1, true)
  return string.sub(template, 1, at - 1) .. id .. string.sub(template, at + 4)
end

local function record_notification(session_key, session_id, kind, tag, now_ms, now_iso)
  local wanted = redis.call('HMGET', session_key, 'callback_url', 'app')
  if not wanted[1] or wanted[1] == '' then return false end
  local id = session_id .. '.' .. kind
  if tag ~= '' then id = id .. '.' .. tag end
  local record = NOTIFICATION_KEYS.record .. id
  if redis.call('EXISTS', record) == 1 then return id end
  local app = wanted[2] or ''
  redis.call('HSET', record, 'id', id, 'type', kind, 'session_id', session_id,
    'app', app, 'created_at', now_iso, 'state', 'pending',
    'next_attempt_at', now_iso, 'failures', 0)
  redis.call('ZADD', notification_key(NOTIFICATION_KEYS.session, session_id), now_ms, id)
  redis.call('ZADD', NOTIFICATION_KEYS.app .. app, now_ms, id)
  redis.call('ZADD', NOTIFICATION_KEYS.pending, now_ms, id)
  redis.call('ZADD', NOTIFICATION_KEYS.schedule, now_ms, 'notify:' .. id)
  return id
end
