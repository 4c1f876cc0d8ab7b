-- grant: an admin adds (or, with a negative amount, removes) credits. Idempotent by
-- operation id: a repeated id changes nothing and answers 'already'.
--
-- KEYS[1] user      user hash       tg:{b}:user:<uid>
-- KEYS[2] ops       user ops        tg:{b}:user:<uid>:ops  (hash op id -> amount, applied admin ops)
-- KEYS[3] ledger    bucket ledger   tg:{b}:ledger
-- KEYS[4] counters  bucket counters tg:{b}:counters (includes/stats.lua: credits:granted | revoked)
-- KEYS[5] alert_log optional: account log tg:{b}:user:<uid>:account-hooks (includes/alerts.lua)
-- KEYS[6] webhooks  optional: bucket webhooks tg:{b}:webhooks (zset delivery id -> next attempt ms)
--
-- ARGV[1] user_id  ARGV[2] op_id: the operation id  ARGV[3] amount (integer, may be negative)
-- ARGV[4] reason   ARGV[5] now ms
-- ARGV[6] min_price: the cheapest model's price ('' = unknown: the stored one, includes/alerts.lua)
--
-- Returns {code, available, reserved, spent, granted} with code one of
--   'ok' | 'already' | 'not_found' | 'insufficient_credits' (a removal below zero)
--   | 'bad_argument'
--   | 'wrong_type' ({code, n}: the n-th key checked holds another type; nothing written)
-- @include stats
-- @include key_types
local amount, now = tonumber(ARGV[3]), tonumber(ARGV[5])
if not amount or amount % 1 ~= 0 or not now then return {'bad_argument', 'amount'} end
local bad = wrong_type({{KEYS[1], 'hash'}, {KEYS[2], 'hash'}, {KEYS[3], 'list'},
  {KEYS[4], 'hash'}})
-- @include alerts
local alert_keys = {user = KEYS[1], log = KEYS[5], webhooks = KEYS[6]}
bad = bad or alerts_wrong_type(alert_keys, 4)
if bad then return {'wrong_type', bad} end
local user = redis.call('HMGET', KEYS[1], 'available', 'reserved', 'spent', 'granted')
if not user[1] then return {'not_found'} end
if redis.call('HEXISTS', KEYS[2], 'grant:' .. ARGV[2]) == 1 then
  return {'already', user[1], user[2], user[3], user[4]}
end
local available = tonumber(user[1]) + amount
if available < 0 then return {'insufficient_credits', user[1], user[2], user[3], user[4]} end
local granted = tonumber(user[4]) + amount
redis.call('HSET', KEYS[1], 'available', available, 'granted', granted)
alerts_after(alert_keys, ARGV[1], now, tonumber(ARGV[6]))
redis.call('HSET', KEYS[2], 'grant:' .. ARGV[2], amount)
redis.call('RPUSH', KEYS[3], cjson.encode({id = 'grant:' .. ARGV[1] .. ':' .. ARGV[2],
  user_id = ARGV[1], kind = 'grant', amount = amount, reason = ARGV[4], at = now}))
if amount > 0 then stats_add(KEYS[4], 'credits:granted', amount) end
if amount < 0 then stats_add(KEYS[4], 'credits:revoked', 0 - amount) end
return {'ok', available, user[2], user[3], granted}
