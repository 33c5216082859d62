-- KEYS[1]: the sorted set of slots, scored in microseconds of Redis time.
-- ARGV: limit, window (us), max_in_flight (us), member. Returns 0 when admitted, else the
-- microseconds until the earliest slot frees (at least the window if all are in flight).
-- Scores go to Redis as numbers (17 significant digits); Lua's own tostring keeps only 14,
-- hence string.format for the exclusive bound.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit, window, in_flight = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('(%.0f', now - window))
if redis.call('ZCARD', KEYS[1]) < limit then
    redis.call('ZADD', KEYS[1], now + in_flight, ARGV[4])
    redis.call('PEXPIRE', KEYS[1], math.ceil((in_flight + window) / 1000) + 1000)
    return 0
end
local earliest = tonumber(redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2])
if earliest > now then
    return window
end
return math.max(1, earliest + window - now)
