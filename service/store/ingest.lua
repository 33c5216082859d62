-- KEYS: nonce ('' when none), event, queue, queue messages, event index, stats,
-- the VTS session's events in flight ('' for recordings; a zset of event id ->
-- received ms, which the apply script empties), the VTS session's callbacks,
-- the event under its id of the previous VTS token ('' when none), the VTS
-- session's claim, the VTS session's tombstone (see EventKeys.gone)
-- ARGV: event id, retention (s), received (ms), redis message id, payload,
-- the event's id under the previous VTS token ('' when none), session key prefix,
-- field, value, ...
-- A callback for an erased or purged session is dropped: nothing is stored, not even its
-- nonce. The event index keeps what is younger than the retention: it is trimmed as it
-- grows. IN_FLIGHT_TTL (s) is defined ahead of this file by service/store/events.py.

local owner = redis.call('GET', KEYS[10])
if redis.call('EXISTS', KEYS[11]) == 1
    or (owner and redis.call('HEXISTS', ARGV[7] .. owner, 'erased_at') == 1) then
  redis.call('HINCRBY', KEYS[6], 'dropped', 1)
  return 'dropped'
end
if KEYS[1] ~= '' then
  local seen = redis.call('GET', KEYS[1])
  if seen and seen ~= ARGV[1] and seen ~= ARGV[6] then
    redis.call('HINCRBY', KEYS[6], 'replayed', 1)
    return 'replayed'
  end
end
if redis.call('EXISTS', KEYS[2]) == 1 or (KEYS[9] ~= '' and redis.call('EXISTS', KEYS[9]) == 1) then
  redis.call('HINCRBY', KEYS[6], 'duplicate', 1)
  return 'duplicate'
end
if KEYS[1] ~= '' then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) end
redis.call('HSET', KEYS[2], unpack(ARGV, 8))
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[5], ARGV[3], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', '(' .. (ARGV[3] - ARGV[2] * 1000))
redis.call('SADD', KEYS[8], ARGV[1])
redis.call('EXPIRE', KEYS[8], ARGV[2])
redis.call('HSET', KEYS[4], ARGV[4], ARGV[5])
redis.call('RPUSH', KEYS[3], ARGV[4])
redis.call('HINCRBY', KEYS[6], 'accepted', 1)
if KEYS[7] ~= '' then
  redis.call('ZADD', KEYS[7], ARGV[3], ARGV[1])
  redis.call('EXPIRE', KEYS[7], IN_FLIGHT_TTL)
end
return 'accepted'
