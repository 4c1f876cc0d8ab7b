-- alert_set: the account's balance alert and webhook settings (PUT/DELETE /me/webhook,
-- PUT /me/alerts, and the rebuild after a Redis loss), as SQL holds them. Sets them all, and
-- the fired state from the balance now: an alert fires when available falls below its
-- threshold after this (one already below it fires once it was back at or above it).
--
-- KEYS[1] user  user hash  tg:{b}:user:<uid>
--
-- ARGV[1] low_balance ('' = off)  ARGV[2] hook_url ('' = none)
-- ARGV[3] hook_events (comma separated)  ARGV[4] floor: the cheapest model's price ('' =
--   keep the stored one)
--
-- Returns {code} with code 'ok' | 'not_found' (the user is not provisioned) | 'bad_argument'
--   | 'wrong_type' ({code, n}: the n-th key checked holds another type; nothing written)
-- @include key_types
local low = tonumber(ARGV[1])
if ARGV[1] ~= '' and (not low or low % 1 ~= 0 or low < 0) then return {'bad_argument', 'low'} end
local floor = tonumber(ARGV[4])
if ARGV[4] ~= '' and (not floor or floor % 1 ~= 0 or floor < 0) then
  return {'bad_argument', 'floor'}
end
local bad = wrong_type({{KEYS[1], 'hash'}})
if bad then return {'wrong_type', bad} end
local available = tonumber(redis.call('HGET', KEYS[1], 'available'))
if not available then return {'not_found'} end
if floor then redis.call('HSET', KEYS[1], 'alert_floor', floor) end
floor = tonumber(redis.call('HGET', KEYS[1], 'alert_floor'))
if low then
  redis.call('HSET', KEYS[1], 'alert_low', low)
else
  redis.call('HDEL', KEYS[1], 'alert_low')
end
if low and available < low then
  redis.call('HSET', KEYS[1], 'alert_low_sent', '1')
else
  redis.call('HDEL', KEYS[1], 'alert_low_sent')
end
if floor and available < floor then
  redis.call('HSET', KEYS[1], 'alert_exh_sent', '1')
else
  redis.call('HDEL', KEYS[1], 'alert_exh_sent')
end
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], 'hook_url', ARGV[2], 'hook_events', ARGV[3])
else
  redis.call('HDEL', KEYS[1], 'hook_url', 'hook_events')
end
return {'ok'}
