-- Notes a failed attempt at an app's endpoint; disables the endpoint once it has failed
-- for long enough. Both keys live as long as the endpoint memory after each failure.
--
-- KEYS[1] the app's endpoints (hash: origin -> state, JSON)
-- KEYS[2] the disabled endpoints (zset: '<app> <origin>' by when disabled, epoch ms)
--
-- ARGV[1] one JSON object:
--   origin           the endpoint
--   member           its entry in the disabled index
--   now_ms, now      the time now (epoch ms; ISO 8601)
--   disable_after    how long it may fail before it is disabled (ms; 0: at once)
--   reason           why it is disabled, should this failure disable it
--   lifetime         how long a failing or disabled endpoint is remembered (ms)
--
-- Returns {state (JSON), 1 if this failure disabled it else 0}.

local endpoints_key, disabled_key = KEYS[1], KEYS[2]
local a = cjson.decode(ARGV[1])

local raw = redis.call('HGET', endpoints_key, a.origin)
local state = raw and cjson.decode(raw) or {failing_since = a.now_ms}
local newly = 0
if not state.disabled_at and a.now_ms - state.failing_since >= a.disable_after then
  state.disabled_at = a.now
  state.reason = a.reason
  redis.call('ZADD', disabled_key, a.now_ms, a.member)
  newly = 1
end
local encoded = cjson.encode(state)
redis.call('HSET', endpoints_key, a.origin, encoded)
redis.call('PEXPIRE', endpoints_key, a.lifetime)
redis.call('ZREMRANGEBYSCORE', disabled_key, '-inf', a.now_ms - a.lifetime)
return {encoded, newly}
