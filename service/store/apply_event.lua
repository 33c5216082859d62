-- Applies one VTS session event to its session, exactly once: the effect and the
-- "applied" marker are written together, and nothing is written unless every argument
-- is valid.
--
-- KEYS[1] the session (hash)          KEYS[2] the session's applied markers (set)
-- KEYS[3] the session's timeline      KEYS[4] event statistics (hash)
-- KEYS[5] the timer schedule (zset)   KEYS[6] the VTS session's events in flight (zset)
--
-- ARGV[1] one JSON object:
--   event_id       the stored callback's id (leaves the in-flight set)
--   marker         'seq:<n>' or 'id:<event id>': what makes a redelivery a duplicate
--   role           see service/vts/callbacks.py Role
--   party          'first', 'second' or '' (whose leg)
--   sequence       the event's SequenceNumber as a string of digits, or ''
--   billed         billed seconds of an ended leg, digits
--   amount_nanos   amount of an ended leg in billionths, digits
--   at             when the event happened (ISO 8601, UTC): comparable as text
--   entry          the timeline entry (JSON text)
--   virtual_number the new number ('' unless role is 'number')
--   updated_at     now (ISO 8601)
--   reconcile_at   when to reconcile (epoch ms as digits, or '')
--   purge_at       when to purge the session should this event end it (epoch ms, digits)
--   session_id, channel, status_prefix, timeline_limit
--
-- Returns {outcome, status before, status after, interactions added, app wants news}:
-- outcome is 'applied', 'duplicate', 'missing' (no such session) or 'invalid' (the
-- second element says which argument; nothing was written).
--
-- Every role adds the same to the counters whatever the order of arrival. The one
-- cross-event rule, pairing a party's answered leg with the other party's at the next or
-- previous sequence number, counts each pair once, when its second member is applied.

local a = cjson.decode(ARGV[1])
local MAX_BILLED = 86400
local MAX_AMOUNT_NANOS = 1000 * 1000000000
local ROLES = {
  progress = true, leg_end = true, leg_complete = true, parties_hangup = true,
  timeout = true, number = true, note = true, unknown = true,
}
local LEGS = {leg_end = true, leg_complete = true}
local CALL = {progress = true, leg_end = true, leg_complete = true, parties_hangup = true}

local function digits(value, max)
  if type(value) ~= 'string' or not string.match(value, '^%d+$') or #value > 15 then
    return nil
  end
  local number = tonumber(value)
  if max and number > max then return nil end
  return number
end

local function invalid(reason) return {'invalid', reason, '', 0, 0} end

if not ROLES[a.role] then return invalid('role') end
if a.party ~= 'first' and a.party ~= 'second' and a.party ~= '' then
  return invalid('party')
end
if LEGS[a.role] and a.party == '' then return invalid('party') end
local sequence = nil
if a.sequence ~= '' then
  sequence = digits(a.sequence)
  if not sequence then return invalid('sequence') end
end
if not digits(a.billed, MAX_BILLED) then return invalid('billed') end
if not digits(a.amount_nanos, MAX_AMOUNT_NANOS) then return invalid('amount_nanos') end
if a.reconcile_at ~= '' and not digits(a.reconcile_at) then return invalid('reconcile_at') end
if not digits(a.purge_at) then return invalid('purge_at') end
if type(a.marker) ~= 'string' or a.marker == '' then return invalid('marker') end
if type(a.at) ~= 'string' or type(a.entry) ~= 'string' then return invalid('at') end

local s, applied = KEYS[1], KEYS[2]
if redis.call('SISMEMBER', applied, a.marker) == 1 then
  redis.call('ZREM', KEYS[6], a.event_id)
  return {'duplicate', '', '', 0, 0}
end
local status = redis.call('HGET', s, 'status')
if not status then return {'missing', '', '', 0, 0} end

redis.call('SADD', applied, a.marker)
redis.call('ZREM', KEYS[6], a.event_id)
local live = status == 'active' or status == 'in_progress'
local new_status = status
local interactions = 0

if LEGS[a.role] then
  redis.call('HINCRBY', s, 'call_count', 1)
  redis.call('HINCRBY', s, 'billed_duration', a.billed)
  redis.call('HINCRBY', s, 'call_amount_nanos', a.amount_nanos)
end
if a.role == 'leg_complete' and sequence then
  local other = a.party == 'first' and 'second' or 'first'
  redis.call('SADD', applied, 'answered:' .. a.party .. ':' .. a.sequence)
  for _, near in ipairs({sequence - 1, sequence + 1}) do
    if redis.call('SISMEMBER', applied, string.format('answered:%s:%d', other, near)) == 1 then
      interactions = interactions + 1
    end
  end
elseif a.role == 'parties_hangup' then
  interactions = 1
end
if interactions > 0 then redis.call('HINCRBY', s, 'interaction_count', interactions) end

if CALL[a.role] then
  if a.role ~= 'progress' then
    local last = redis.call('HGET', s, 'last_interaction_at')
    if not last or a.at > last then redis.call('HSET', s, 'last_interaction_at', a.at) end
  end
  -- The call event with the highest sequence number says whether a call is live, so a
  -- late answer never reopens a call that has ended.
  local latest = tonumber(redis.call('HGET', s, 'call_sequence') or '-1')
  if not sequence or sequence > latest then
    if sequence then redis.call('HSET', s, 'call_sequence', a.sequence) end
    if live then new_status = a.role == 'progress' and 'in_progress' or 'active' end
  end
elseif a.role == 'timeout' then
  if live then new_status = 'expired' end
elseif a.role == 'number' then
  if a.virtual_number ~= '' then redis.call('HSET', s, 'virtual_number', a.virtual_number) end
elseif a.role == 'unknown' then
  redis.call('HINCRBY', KEYS[4], 'unknown', 1)
end

if new_status ~= status then
  local member = redis.call('HGET', s, 'index_member')
  redis.call('HSET', s, 'status', new_status)
  redis.call('ZREM', a.status_prefix .. status, member)
  redis.call('ZADD', a.status_prefix .. new_status, 0, member)
  -- Ending a session schedules its purge, in the same write.
  if new_status == 'expired' then
    redis.call('ZADD', KEYS[5], a.purge_at, 'purge:' .. a.session_id)
  end
end
redis.call('HSET', s, 'updated_at', a.updated_at)
redis.call('RPUSH', KEYS[3], a.entry)
redis.call('LTRIM', KEYS[3], -tonumber(a.timeline_limit), -1)
redis.call('HINCRBY', KEYS[4], 'applied', 1)
redis.call('PUBLISH', a.channel, a.session_id)
if a.reconcile_at ~= '' then
  redis.call('ZADD', KEYS[5], a.reconcile_at, 'reconcile:' .. a.session_id)
end
return {'applied', status, new_status, interactions, redis.call('HEXISTS', s, 'callback_url')}
