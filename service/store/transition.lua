-- Moves a session to a new status (or keeps its status and changes fields) and writes
-- what the change implies in the same step: the timeline entry, the session's timers,
-- the notification that tells the app, and, when the change ends the session, its purge.
-- A worker killed right after cannot leave the change without them, and a redelivered
-- message, finding the change made ('skipped'), writes none of them twice. Nothing is
-- written unless the session exists, its status is one of those allowed and, when the
-- write is fenced, the session's lock is still held by the given token.
--
-- record_notification (notify.lua) and move_status (status.lua) are defined ahead of this
-- file.
--
-- KEYS[1] the session (hash)        KEYS[2] its timeline (list)
-- KEYS[3] the timer schedule (zset) KEYS[4] its lock ('' when the write is not fenced)
--
-- ARGV[1] one JSON object:
--   session_id, to          the new status ('' keeps the current one)
--   allowed                 the statuses the session may be in (list)
--   fields                  {name: value} to set on the session
--   entry                   the timeline entry ('' for none)
--   fence                   the lock token ('' when not fenced)
--   status_prefix, channel, timeline_limit
--   now_ms, now             the time now (epoch ms; ISO 8601)
--   purge_at                when to purge the session if this change ends it (epoch ms)
--   timers                  [[task, due (epoch ms)], ...] set when the change is made
--   notify                  optional {kind, tag}: the notification of the change
--
-- Returns {outcome, status before}: 'ok', 'skipped' (status not allowed), 'missing',
-- 'fenced' (the lock is another's).

local session_key, timeline_key, schedule_key, lock_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local a = cjson.decode(ARGV[1])
local current = redis.call('HGET', session_key, 'status')
if not current then return {'missing', ''} end
if lock_key ~= '' and redis.call('GET', lock_key) ~= a.fence then return {'fenced', current} end
local allowed = false
for _, status in ipairs(a.allowed) do
  if status == current then allowed = true end
end
if not allowed then return {'skipped', current} end

for name, value in pairs(a.fields) do redis.call('HSET', session_key, name, value) end
if a.to ~= '' and a.to ~= current then
  move_status(session_key, a.session_id, current, a.to, a.status_prefix, schedule_key,
    a.purge_at)
end
if a.entry ~= '' then
  redis.call('RPUSH', timeline_key, a.entry)
  redis.call('LTRIM', timeline_key, -tonumber(a.timeline_limit), -1)
end
for _, timer in ipairs(a.timers) do
  redis.call('ZADD', schedule_key, timer[2], timer[1] .. ':' .. a.session_id)
end
if a.notify then
  record_notification(session_key, a.session_id, a.notify.kind, a.notify.tag, a.now_ms, a.now)
end
redis.call('PUBLISH', a.channel, a.session_id)
return {'ok', current}
