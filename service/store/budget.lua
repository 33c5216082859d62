-- An app's share of the VTS budget: a sliding window of the VTS requests it caused, a
-- sorted set scored by when each request counts (ms of Redis time; a follow-up update may
-- count in the future). Prepended to the scripts that spend it.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- 0 when the app may cause one more VTS request at ``at``, else the ms until it may.
local function budget_wait(key, at, limit, window)
  local from = string.format('(%.0f', at - window)
  local used = redis.call('ZCOUNT', key, from, '+inf')
  if used < limit then return 0 end
  local nth = redis.call('ZRANGEBYSCORE', key, from, '+inf', 'WITHSCORES', 'LIMIT', used - limit, 1)
  return math.max(1, tonumber(nth[2]) + window - at)
end
local function budget_spend(key, now, at, window, member)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('(%.0f', now - window))
  redis.call('ZADD', key, at, member)
  local ttl = at - now + window + 1000
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
end
