-- Admits one VTS request if the sliding window has room: a slot is held from admission
-- until its release + the window (while in flight, admission + max_in_flight).
-- Scores go to Redis as numbers (17 significant digits); Lua's own tostring keeps only 14,
-- hence string.format for the exclusive bound.
--
-- KEYS[1] the slots (zset, scored in microseconds of Redis time)
--
-- ARGV[1] one JSON object:
--   limit            how many slots the window holds
--   window           (us)
--   max_in_flight    how long a slot is held at most before its release (us)
--   member           the slot's id
--
-- Returns 0 when admitted, else the microseconds until the earliest slot frees (at
-- least the window if all are in flight).

local slots_key = KEYS[1]
local a = cjson.decode(ARGV[1])

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', slots_key, '-inf', string.format('(%.0f', now - a.window))
if redis.call('ZCARD', slots_key) < a.limit then
    redis.call('ZADD', slots_key, now + a.max_in_flight, a.member)
    redis.call('PEXPIRE', slots_key, math.ceil((a.max_in_flight + a.window) / 1000) + 1000)
    return 0
end
local earliest = tonumber(redis.call('ZRANGE', slots_key, 0, 0, 'WITHSCORES')[2])
if earliest > now then
    return a.window
end
return math.max(1, earliest + a.window - now)
