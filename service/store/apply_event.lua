-- Applies one stored VTS session event to its session, exactly once, in one round trip:
-- it reads the stored callback and the session of its VTS session, checks and
-- normalises the event's values, then writes the effect and the "applied" marker
-- together. Nothing is written unless every value is valid.
--
-- EVENTS (event name -> {role, party}) is defined ahead of this file by
-- service/store/scripts.py, from service/vts/callbacks.py (ROLES and party_of), and so
-- are record_notification (notify.lua), with which the app's notifications of the
-- session's end and of each finished call are recorded in the same write as the event,
-- and move_status (status.lua), the status change every script makes the same way.
--
-- KEYS[1] the stored callback (hash: params, received_ms)
-- KEYS[2] the VTS session's claim (string: our session id)
-- KEYS[3] the VTS session's events in flight (zset)
-- KEYS[4] event statistics (hash)         KEYS[5] the timer schedule (zset)
--
-- ARGV[1] one JSON object:
--   event_id         the stored callback's id (leaves the in-flight set)
--   now              the time now (ISO 8601, UTC, milliseconds): updated_at, the timeline
--                    entry's time, and the event's time when it gives none we can read
--   clock_ms         the time now (epoch ms, digits): reconciliations are due from it
--   purge_at         when to purge the session should this event end it (epoch ms, digits)
--   reconcile_after  {role: ms}: roles after which to compare with VTS, and how soon
--   session_key, applied_key, timeline_key
--                    the session's keys, with '{id}' where the session id goes
--   channel, status_prefix, timeline_limit
--   marker           optional: what makes a redelivery a duplicate ('seq:<n>' or
--                    'id:<event id>'); derived from SequenceNumber when not given
--   virtual_number   optional: the new number of a 'number' event ('' if unreadable)
--
-- Returns {outcome, detail, session id, event name, sequence, status before, status
-- after, interactions added}, where sequence is SequenceNumber's
-- digits without leading zeros ('' when absent or malformed). Outcomes:
--   'applied'
--   'duplicate'   its marker was applied before: nothing written but leaving the
--                 in-flight set
--   'missing'     the VTS session is claimed by a session that no longer exists
--   'erased'      the session was erased: nothing written (the caller drops the event)
--   'expired'     the stored callback is gone
--   'no_session'  its VTS session is not claimed yet; detail: received (epoch ms)
--   'invalid'     detail names the value; nothing written
--   'needs'       what only the caller can compute is missing (the virtual number of a
--                 'number' event, the marker of an event without a SequenceNumber or
--                 with 0): detail is the callback's params (JSON); call again with them
--
-- Every role adds the same to the counters whatever the order of arrival. The one
-- cross-event rule, pairing a party's answered leg with the other party's at the next or
-- previous sequence number, counts each pair once, when its second member is applied.

local callback_key, claim_key, in_flight_key = KEYS[1], KEYS[2], KEYS[3]
local stats_key, schedule_key = KEYS[4], KEYS[5]
local a = cjson.decode(ARGV[1])
local MAX_BILLED = 86400
local MAX_AMOUNT_NANOS = 1000 * 1000000000
local LEGS = {leg_end = true, leg_complete = true}
local CALL = {progress = true, leg_end = true, leg_complete = true, parties_hangup = true}
-- The timeline shows these fields of an event, renamed, in this order.
local SHOWN = {
  {'Duration', 'duration'}, {'BilledDuration', 'billed_duration'}, {'Amount', 'amount'},
  {'HangupCause', 'hangup_cause'}, {'HangupCauseCode', 'hangup_cause_code'},
}

local function digits(value)
  return type(value) == 'string' and string.match(value, '^%d+$') ~= nil
end

-- Digits without their leading zeros ('0' for zero).
local function canonical(text)
  return string.match(text, '^0*(%d.-)$')
end

local function key(template, id)
  local at = string.find(template, '{id}', 1, true)
  return string.sub(template, 1, at - 1) .. id .. string.sub(template, at + 4)
end

-- Billed seconds of an ended leg: digits, at most a day.
local function billed_seconds(text)
  if text == nil or text == '' then return 0 end
  if not digits(text) then return nil end
  local number = canonical(text)
  if #number > 5 or tonumber(number) > MAX_BILLED then return nil end
  return tonumber(number)
end

-- An amount as billionths (digits), or nil unless it is a finite decimal from 0 to 1000
-- with at most 9 decimals: what Python's Decimal reads (sign, exponent, surrounding
-- spaces), but ASCII digits without '_'.
local function amount_nanos(text)
  if text == nil or text == '' then return '0' end
  if type(text) ~= 'string' then return nil end
  local sign, whole, fraction, e, exponent = string.match(
    text, '^%s*([+-]?)(%d*)%.?(%d*)([eE]?)([+-]?%d*)%s*$')
  if not sign or whole .. fraction == '' then return nil end
  if (e == '') ~= (exponent == '') or (e ~= '' and not string.match(exponent, '%d$')) then
    return nil
  end
  local number = string.match(whole .. fraction, '^0*(.-)$')
  if number == '' then return '0' end
  if sign == '-' then return nil end
  local shift = string.match(exponent, '^[+-]?0*(%d*)$')
  if #shift > 9 then return nil end
  -- number x 10^scale is the amount in billionths.
  local scale = (tonumber(shift) or 0) * (string.sub(exponent, 1, 1) == '-' and -1 or 1)
    - #fraction + 9
  if scale < 0 then
    local kept = #number + scale
    if kept < 1 or not string.match(string.sub(number, kept + 1), '^0*$') then return nil end
    number = string.sub(number, 1, kept)
  else
    if #number + scale > 13 then return nil end
    number = number .. string.rep('0', scale)
  end
  if tonumber(number) > MAX_AMOUNT_NANOS then return nil end
  return number
end

local function leap(year)
  return year % 4 == 0 and (year % 100 ~= 0 or year % 400 == 0)
end
local MONTH_DAYS = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31}

-- A zone Python's datetime.fromisoformat reads (Z, +-HH, +-HH:MM, +-HHMM): it takes any
-- minutes as long as the offset is under a day.
local function zone_ok(zone)
  if zone == '' or zone == 'Z' then return true end
  local hours, minutes = string.match(zone, '^[+-](%d%d)$'), '0'
  if not hours then hours, minutes = string.match(zone, '^[+-](%d%d):?(%d%d)$') end
  return hours ~= nil and tonumber(hours) * 60 + tonumber(minutes) < 24 * 60
end

-- When the event happened, as Python's datetime.fromisoformat reads EventTimestamp with
-- its zone dropped (VTS sends UTC as 'YYYY-MM-DD HH:MM:SS'), in ISO 8601 with
-- milliseconds; nil unless it is of the forms read here: YYYY-MM-DD, then optionally
-- 'T', 't' or ' ', HH[:MM[:SS]], a fraction of a second ('.' or ','), a zone (zone_ok).
local function event_time(text)
  if type(text) ~= 'string' then return nil end
  text = string.match(text, '^%s*(.-)%s*$')
  local y, mo, d, rest = string.match(text, '^(%d%d%d%d)%-(%d%d)%-(%d%d)(.*)$')
  if not y then return nil end
  local h, mi, s, fraction = '00', '00', '00', ''
  if rest ~= '' then
    local clock, zone = string.match(rest, '^[Tt ]([%d:.,]+)(.*)$')
    if not clock or not zone_ok(zone) then return nil end
    -- Python takes a fraction of a second after the hour or the minutes too.
    local whole, digits_after = string.match(clock, '^([^.,]*)[.,](%d+)$')
    if whole then clock, fraction = whole, digits_after end
    h, mi, s = string.match(clock, '^(%d%d):(%d%d):(%d%d)$')
    if not h then
      h, mi = string.match(clock, '^(%d%d):(%d%d)$')
      s = '00'
    end
    if not h then
      h = string.match(clock, '^(%d%d)$')
      mi = '00'
    end
    if not h then return nil end
  end
  y, mo, d = tonumber(y), tonumber(mo), tonumber(d)
  local hour, minute, second = tonumber(h), tonumber(mi), tonumber(s)
  if y < 1 or mo < 1 or mo > 12 or d < 1 or hour > 23 or minute > 59 or second > 59 then
    return nil
  end
  if d > (mo == 2 and leap(y) and 29 or MONTH_DAYS[mo]) then return nil end
  return string.format('%04d-%02d-%02dT%02d:%02d:%02d.%s+00:00',
    y, mo, d, hour, minute, second, string.sub(fraction .. '000', 1, 3))
end

-- The event as the timeline shows it (the shape of codec.timeline_entry's entries): its
-- name, sequence, time and the SHOWN fields, never a phone number.
local function timeline_entry(params, sequence, at)
  local parts = {
    '{"at":', cjson.encode(a.now), ',"type":"vts_event","name":', cjson.encode(params.EventName),
    ',"sequence":', sequence or 'null', ',"event_time":', cjson.encode(at),
  }
  for _, field in ipairs(SHOWN) do
    local value = params[field[1]]
    if value ~= nil then
      parts[#parts + 1] = ',"' .. field[2] .. '":' .. cjson.encode(value)
    end
  end
  parts[#parts + 1] = '}'
  return table.concat(parts)
end

local function answer(outcome, detail, session_id, name, sequence)
  return {outcome, detail or '', session_id or '', name or '', sequence or '', '', '', 0}
end

if not digits(a.clock_ms) then return answer('invalid', 'clock_ms') end
if not digits(a.purge_at) then return answer('invalid', 'purge_at') end
if a.marker ~= nil and (type(a.marker) ~= 'string' or a.marker == '') then
  return answer('invalid', 'marker')
end
if a.virtual_number ~= nil and type(a.virtual_number) ~= 'string' then
  return answer('invalid', 'virtual_number')
end

local stored = redis.call('HMGET', callback_key, 'params', 'received_ms')
if not stored[1] then return answer('expired') end
local readable, params = pcall(cjson.decode, stored[1])
if not readable or type(params) ~= 'table' then return answer('invalid', 'params') end
local name = params.EventName
if type(name) ~= 'string' then return answer('invalid', 'EventName') end
local sequence = nil
if params.SequenceNumber ~= nil and params.SequenceNumber ~= '' then
  if not digits(params.SequenceNumber) or #params.SequenceNumber > 15 then
    return answer('invalid', 'SequenceNumber', '', name)
  end
  sequence = canonical(params.SequenceNumber)
end
local session_id = redis.call('GET', claim_key)
if not session_id then return answer('no_session', stored[2], '', name, sequence) end

local event = EVENTS[name] or {'unknown', ''}
local role, party = event[1], event[2]
local billed, nanos = 0, '0'
if LEGS[role] then
  billed = billed_seconds(params.BilledDuration)
  if not billed then return answer('invalid', 'BilledDuration', session_id, name, sequence) end
  nanos = amount_nanos(params.Amount)
  if not nanos then return answer('invalid', 'Amount', session_id, name, sequence) end
end
if (role == 'number' and a.virtual_number == nil)
    or (a.marker == nil and (sequence == nil or sequence == '0')) then
  return answer('needs', stored[1], session_id, name, sequence)
end
local marker = a.marker or ('seq:' .. sequence)
local at = event_time(params.EventTimestamp) or a.now

local s, applied = key(a.session_key, session_id), key(a.applied_key, session_id)
local timeline = key(a.timeline_key, session_id)
-- Erasure keeps the counters as they were: nothing that arrives later counts.
if redis.call('HEXISTS', s, 'erased_at') == 1 then
  return answer('erased', '', session_id, name, sequence)
end
if redis.call('SISMEMBER', applied, marker) == 1 then
  redis.call('ZREM', in_flight_key, a.event_id)
  return answer('duplicate', '', session_id, name, sequence)
end
local status = redis.call('HGET', s, 'status')
if not status then return answer('missing', '', session_id, name, sequence) end

redis.call('SADD', applied, marker)
redis.call('ZREM', in_flight_key, a.event_id)
local live = status == 'active' or status == 'in_progress'
local new_status = status
local interactions = 0

if LEGS[role] then
  redis.call('HINCRBY', s, 'call_count', 1)
  redis.call('HINCRBY', s, 'billed_duration', billed)
  redis.call('HINCRBY', s, 'call_amount_nanos', nanos)
end
if role == 'leg_complete' and sequence then
  local other = party == 'first' and 'second' or 'first'
  redis.call('SADD', applied, 'answered:' .. party .. ':' .. sequence)
  local number = tonumber(sequence)
  for _, near in ipairs({number - 1, number + 1}) do
    if redis.call('SISMEMBER', applied, string.format('answered:%s:%d', other, near)) == 1 then
      interactions = interactions + 1
    end
  end
elseif role == 'parties_hangup' then
  interactions = 1
end
if interactions > 0 then redis.call('HINCRBY', s, 'interaction_count', interactions) end

if CALL[role] then
  if role ~= 'progress' then
    local last = redis.call('HGET', s, 'last_interaction_at')
    if not last or at > last then redis.call('HSET', s, 'last_interaction_at', at) end
  end
  -- The call event with the highest sequence number says whether a call is live, so a
  -- late answer never reopens a call that has ended.
  local latest = tonumber(redis.call('HGET', s, 'call_sequence') or '-1')
  if not sequence or tonumber(sequence) > latest then
    if sequence then redis.call('HSET', s, 'call_sequence', sequence) end
    if live then new_status = role == 'progress' and 'in_progress' or 'active' end
  end
elseif role == 'timeout' then
  if live then new_status = 'expired' end
elseif role == 'number' then
  if a.virtual_number ~= '' then redis.call('HSET', s, 'virtual_number', a.virtual_number) end
elseif role == 'unknown' then
  redis.call('HINCRBY', stats_key, 'unknown', 1)
end

if new_status ~= status then
  -- Ending a session schedules its purge, in the same write.
  move_status(s, session_id, status, new_status, a.status_prefix, schedule_key, a.purge_at)
end
redis.call('HSET', s, 'updated_at', a.now)
redis.call('RPUSH', timeline, timeline_entry(params, sequence, at))
redis.call('LTRIM', timeline, -tonumber(a.timeline_limit), -1)
redis.call('HINCRBY', stats_key, 'applied', 1)
redis.call('PUBLISH', a.channel, session_id)
-- The app hears of the session's end and of each finished call in this same write.
if new_status == 'expired' and status ~= 'expired' then
  record_notification(s, session_id, 'session.expired', '', a.clock_ms, a.now)
end
if interactions > 0 then
  record_notification(s, session_id, 'session.call_ended', string.match(marker, ':(.*)$'),
    a.clock_ms, a.now)
end
local after = a.reconcile_after[role]
if after then
  redis.call('ZADD', schedule_key, tonumber(a.clock_ms) + after, 'reconcile:' .. session_id)
end
return {'applied', '', session_id, name, sequence or '', status, new_status, interactions}
