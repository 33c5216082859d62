-- KEYS: lock. ARGV: token. Deletes the lock only if we still hold it.

if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
