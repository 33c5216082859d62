-- Moves a session from one status to another: its status field, its entry in the status
-- indexes and, when the new status ends the session, its purge timer. Included by every
-- script that changes a session's status (transition.lua, apply_event.lua), so a status
-- change is written one way, whatever made it.
--
-- move_status(session_key, session_id, from, to, status_prefix, schedule_key, purge_at)
--   status_prefix  the status indexes' prefix (the status is appended)
--   schedule_key   the timer schedule (zset): 'purge:<id>' is due at purge_at (epoch ms)

local ENDED = {expired = true, failed = true}

local function move_status(session_key, session_id, from, to, status_prefix, schedule_key,
                           purge_at)
  local member = redis.call('HGET', session_key, 'index_member')
  redis.call('HSET', session_key, 'status', to)
  redis.call('ZREM', status_prefix .. from, member)
  redis.call('ZADD', status_prefix .. to, 0, member)
  if ENDED[to] then
    redis.call('ZADD', schedule_key, purge_at, 'purge:' .. session_id)
  end
end
