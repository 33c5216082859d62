-- Sets each counter's adjustment so that counter + adjustment equals VTS's total.
--
-- KEYS[1] the session (hash)
--
-- ARGV[1] one JSON object:
--   totals           [[counter, VTS's total], ...]
--
-- Returns the shown values before, in the order of totals.

local session_key = KEYS[1]
local a = cjson.decode(ARGV[1])

local before = {}
for _, total in ipairs(a.totals) do
  local name, wanted = total[1], total[2]
  local counted = tonumber(redis.call('HGET', session_key, name) or '0')
  local adjust = tonumber(redis.call('HGET', session_key, 'adjust_' .. name) or '0')
  -- %.0f, not tostring: Lua would write large numbers in exponent form.
  before[#before + 1] = string.format('%.0f', counted + adjust)
  redis.call('HSET', session_key, 'adjust_' .. name, string.format('%.0f', wanted - counted))
end
return before
