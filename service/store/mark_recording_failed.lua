-- Marks a recording whose download was given up as failed, with the reason apps see. A
-- stored or deleted recording stays as it is.
--
-- KEYS[1] the recording (hash)
-- ARGV[1] now (ISO 8601)  ARGV[2] the reason
--
-- Returns 'ok', 'missing', or the status that did not allow the change.

local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status ~= 'pending' and status ~= 'failed' then return status end
redis.call('HSET', KEYS[1], 'status', 'failed', 'updated_at', ARGV[1], 'error', ARGV[2])
return 'ok'
