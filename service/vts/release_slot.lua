-- Marks a slot complete now; XX, so a slot that already expired is not brought back.

local t = redis.call('TIME')
return redis.call('ZADD', KEYS[1], 'XX', tonumber(t[1]) * 1000000 + tonumber(t[2]), ARGV[1])
