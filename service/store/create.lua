-- Stores a new session and queues its creation, unless its Idempotency-Key was used
-- before, the app holds its cap of live sessions, or the app has spent its VTS budget.
-- The app's live sessions are counted in the status indexes, which every transition,
-- purge and erasure keeps exact: nothing else to keep in step.
--
-- The budget functions (budget.lua) are defined ahead of this file.
--
-- KEYS[1] the idempotency record (hash; '' when no key was given)
-- KEYS[2] the session (hash)           KEYS[3] the index of all sessions (zset)
-- KEYS[4] its status's index (zset)    KEYS[5] its timeline (list)
-- KEYS[6] the queue (list)             KEYS[7] the queue's messages (hash)
-- KEYS[8] the app's VTS budget (zset)
-- KEYS[9], KEYS[10], KEYS[11] the pending, active and in_progress indexes (zsets)
--
-- ARGV[1] one JSON object:
--   session_id, index_member   the session's id and its entry in the indexes
--   message_id, payload        the queued message's redis id and body
--   entry                      the timeline entry
--   fingerprint                the request's, kept with the idempotency record
--   idempotency_ttl            how long the idempotency record is kept (s)
--   budget_limit, budget_window (ms)
--   max_live                   the app's live session cap (0: none)
--   app_low, app_high          the app's range in the indexes (ZLEXCOUNT bounds)
--   fields                     {name: value}: the session
--
-- Returns {'created'|'replay'|'conflict', session id}, {'throttled', ms to wait} or
-- {'full', live sessions}.

local idempotency_key, session_key = KEYS[1], KEYS[2]
local index_key, status_index_key, timeline_key = KEYS[3], KEYS[4], KEYS[5]
local queue_key, messages_key, budget_key = KEYS[6], KEYS[7], KEYS[8]
local a = cjson.decode(ARGV[1])

if idempotency_key ~= '' then
  local found = redis.call('HMGET', idempotency_key, 'fingerprint', 'session_id')
  if found[1] then
    if found[1] == a.fingerprint then return {'replay', found[2]} end
    return {'conflict', found[2]}
  end
end
if a.max_live > 0 then
  local live = 0
  for i = 9, 11 do live = live + redis.call('ZLEXCOUNT', KEYS[i], a.app_low, a.app_high) end
  if live >= a.max_live then return {'full', tostring(live)} end
end
local now = now_ms()
local wait = budget_wait(budget_key, now, a.budget_limit, a.budget_window)
if wait > 0 then return {'throttled', tostring(wait)} end
if idempotency_key ~= '' then
  redis.call('HSET', idempotency_key, 'fingerprint', a.fingerprint, 'session_id', a.session_id)
  redis.call('EXPIRE', idempotency_key, a.idempotency_ttl)
end
budget_spend(budget_key, now, now, a.budget_window, a.session_id)
local fields = {'index_member', a.index_member}
for name, value in pairs(a.fields) do
  fields[#fields + 1] = name
  fields[#fields + 1] = value
end
redis.call('HSET', session_key, unpack(fields))
-- The session names its idempotency record, so that purge and erasure can remove it.
if idempotency_key ~= '' then
  redis.call('HSET', session_key, 'idempotency_key', idempotency_key)
end
redis.call('ZADD', index_key, 0, a.index_member)
redis.call('ZADD', status_index_key, 0, a.index_member)
redis.call('RPUSH', timeline_key, a.entry)
redis.call('HSET', messages_key, a.message_id, a.payload)
redis.call('RPUSH', queue_key, a.message_id)
return {'created', a.session_id}
