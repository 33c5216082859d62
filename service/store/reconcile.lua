-- Sets each counter's adjustment so that counter + adjustment equals VTS's total.
-- KEYS: session. ARGV: counter, VTS total, counter, VTS total, ...
-- Returns the shown values before, in the same order.

local before = {}
for i = 1, #ARGV, 2 do
  local name = ARGV[i]
  local counted = tonumber(redis.call('HGET', KEYS[1], name) or '0')
  local adjust = tonumber(redis.call('HGET', KEYS[1], 'adjust_' .. name) or '0')
  -- %.0f, not tostring: Lua would write large numbers in exponent form.
  before[#before + 1] = string.format('%.0f', counted + adjust)
  local wanted = tonumber(ARGV[i + 1])
  redis.call('HSET', KEYS[1], 'adjust_' .. name, string.format('%.0f', wanted - counted))
end
return before
