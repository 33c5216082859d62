-- KEYS: vts session claim. ARGV: session id. Returns the owner.

if redis.call('SET', KEYS[1], ARGV[1], 'NX') then return ARGV[1] end
return redis.call('GET', KEYS[1])
