-- KEYS: the app's endpoints, the disabled index. ARGV: origin, now (ms), now (ISO),
-- disable after (ms; 0: at once), reason, lifetime (ms), index member.
-- Notes a failed attempt; disables the endpoint once it has failed for long enough.
-- Returns {state (JSON), 1 if this failure disabled it else 0}.

local raw = redis.call('HGET', KEYS[1], ARGV[1])
local state = raw and cjson.decode(raw) or {failing_since = tonumber(ARGV[2])}
local newly = 0
if not state.disabled_at and tonumber(ARGV[2]) - state.failing_since >= tonumber(ARGV[4]) then
  state.disabled_at = ARGV[3]
  state.reason = ARGV[5]
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[7])
  newly = 1
end
local encoded = cjson.encode(state)
redis.call('HSET', KEYS[1], ARGV[1], encoded)
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tonumber(ARGV[2]) - tonumber(ARGV[6]))
return {encoded, newly}
