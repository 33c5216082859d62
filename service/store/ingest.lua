-- Stores a VTS callback and queues its processing, unless its session was erased or
-- purged (it is dropped: nothing is stored, not even its nonce), its nonce came with
-- another event (replayed) or the event is stored already (duplicate). The event index
-- keeps what is younger than the retention: it is trimmed as it grows.
--
-- IN_FLIGHT_TTL (s) is defined ahead of this file by service/store/events.py.
--
-- KEYS[1] the nonce (string: the event id it came with; '' when none)
-- KEYS[2] the event (hash)             KEYS[3] the queue (list)
-- KEYS[4] the queue's messages (hash)  KEYS[5] the event index (zset by received ms)
-- KEYS[6] the callback totals (hash)
-- KEYS[7] the VTS session's events in flight (zset of event id -> received ms, which the
--         apply script empties; '' for recordings)
-- KEYS[8] the VTS session's callbacks (set)
-- KEYS[9] the event under its id of the previous VTS token ('' when none)
-- KEYS[10] the VTS session's claim (string: our session id)
-- KEYS[11] the VTS session's tombstone (see EventKeys.gone)
--
-- ARGV[1] one JSON object:
--   event_id            the id it is stored under
--   previous_id         its id under the previous VTS token ('' when none)
--   retention           how long it is kept (s)
--   received_ms         when it was received (epoch ms)
--   message_id, payload the queued message's redis id and body
--   session_prefix      a session's key, before its id
--   fields              {name: value}: the event
--
-- Returns 'accepted', 'duplicate', 'replayed' or 'dropped'.

local nonce_key, event_key, queue_key, messages_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local index_key, stats_key, in_flight_key, callbacks_key = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local previous_key, claim_key, tombstone_key = KEYS[9], KEYS[10], KEYS[11]
local a = cjson.decode(ARGV[1])

local owner = redis.call('GET', claim_key)
if redis.call('EXISTS', tombstone_key) == 1
    or (owner and redis.call('HEXISTS', a.session_prefix .. owner, 'erased_at') == 1) then
  redis.call('HINCRBY', stats_key, 'dropped', 1)
  return 'dropped'
end
if nonce_key ~= '' then
  local seen = redis.call('GET', nonce_key)
  if seen and seen ~= a.event_id and seen ~= a.previous_id then
    redis.call('HINCRBY', stats_key, 'replayed', 1)
    return 'replayed'
  end
end
if redis.call('EXISTS', event_key) == 1
    or (previous_key ~= '' and redis.call('EXISTS', previous_key) == 1) then
  redis.call('HINCRBY', stats_key, 'duplicate', 1)
  return 'duplicate'
end
if nonce_key ~= '' then redis.call('SET', nonce_key, a.event_id, 'EX', a.retention) end
local fields = {}
for name, value in pairs(a.fields) do
  fields[#fields + 1] = name
  fields[#fields + 1] = value
end
redis.call('HSET', event_key, unpack(fields))
redis.call('EXPIRE', event_key, a.retention)
redis.call('ZADD', index_key, a.received_ms, a.event_id)
redis.call('ZREMRANGEBYSCORE', index_key, '-inf',
  string.format('(%.0f', a.received_ms - a.retention * 1000))
redis.call('SADD', callbacks_key, a.event_id)
redis.call('EXPIRE', callbacks_key, a.retention)
redis.call('HSET', messages_key, a.message_id, a.payload)
redis.call('RPUSH', queue_key, a.message_id)
redis.call('HINCRBY', stats_key, 'accepted', 1)
if in_flight_key ~= '' then
  redis.call('ZADD', in_flight_key, a.received_ms, a.event_id)
  redis.call('EXPIRE', in_flight_key, IN_FLIGHT_TTL)
end
return 'accepted'
