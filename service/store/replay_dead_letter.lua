-- Moves a dead letter back onto its queue as a fresh message (retries start again).
--
-- KEYS[1] the dead letters (zset)  KEYS[2] the dead letters' messages (hash)
-- KEYS[3] the queue (list)         KEYS[4] the queue's messages (hash)
-- KEYS[5] the dead letter's note (string)
--
-- ARGV[1] the dead letter's redis id  ARGV[2] the new message's redis id
-- ARGV[3] the new message's body
--
-- Returns 1 if the dead letter was there, else 0.

local dead_key, dead_messages_key, queue_key, messages_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local note_key = KEYS[5]
local dead_id, message_id, payload = ARGV[1], ARGV[2], ARGV[3]

if redis.call('ZREM', dead_key, dead_id) == 0 then return 0 end
redis.call('HDEL', dead_messages_key, dead_id)
redis.call('DEL', note_key)
redis.call('HSET', messages_key, message_id, payload)
redis.call('RPUSH', queue_key, message_id)
return 1
