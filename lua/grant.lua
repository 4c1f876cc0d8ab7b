-- grant: an admin adds (or, with a negative amount, removes) credits. Idempotent by
-- operation id: a repeated id changes nothing and answers 'already'.
--
-- KEYS[1] user      user hash       tg:{b}:user:<uid>
-- KEYS[2] ops       user ops        tg:{b}:user:<uid>:ops  (hash op id -> amount, applied admin ops)
-- KEYS[3] ledger    bucket ledger   tg:{b}:ledger
-- KEYS[4] counters  bucket counters tg:{b}:counters (includes/stats.lua: credits:granted | revoked)
-- KEYS[5] grants    user grants     tg:{b}:user:<uid>:grants (includes/grants.lua)
-- KEYS[6] grant_expiry  bucket grant expiry  tg:{b}:grant-expiry (includes/grants.lua)
-- KEYS[7] alert_log optional: account log tg:{b}:user:<uid>:account-hooks (includes/alerts.lua)
-- KEYS[8] webhooks  optional: bucket webhooks tg:{b}:webhooks (zset delivery id -> next attempt ms)
-- KEYS[9] grant_warn optional: bucket grant warning tg:{b}:grant-warn (lua/grants_warn.lua)
--
-- ARGV[1] user_id  ARGV[2] op_id: the operation id  ARGV[3] amount (integer, may be negative)
-- ARGV[4] reason   ARGV[5] now ms
-- ARGV[6] opts, one JSON object (includes/opts.lua); a positive amount needs:
--     grant_id     the new grant's id   kind  'paid' | 'promotional'
--     max_grants   the bound on the user's grants (a grant past it: 'too_many_grants')
--   and may have expires_at (ms, after now; none: it never expires). A negative amount
--   removes credits from the grants in burn-down order, then from the base.
--     min_price    the cheapest model's price (includes/alerts.lua; none: the stored one)
--
-- Returns {code, available, reserved, spent, granted} with code one of
--   'ok' | 'already' | 'not_found' | 'insufficient_credits' (a removal below zero)
--   | 'too_many_grants' (the user holds max_grants grants already) | 'bad_argument'
--   | 'wrong_type' ({code, n}: the n-th key checked holds another type; nothing written)
-- @include stats
-- @include key_types
-- @include opts
-- @include grants
local amount, now = tonumber(ARGV[3]), tonumber(ARGV[5])
if not amount or amount % 1 ~= 0 or not now then return {'bad_argument', 'amount'} end
local opts, bad_opt = read_opts(ARGV[6], {grant_id = 'string', kind = 'string',
                                          expires_at = 'whole', max_grants = 'whole',
                                          min_price = 'whole'})
if not opts then return {'bad_argument', bad_opt} end
if amount > 0 then
  if not opts.grant_id or opts.grant_id == '' or string.find(opts.grant_id, '[:,]') then
    return {'bad_argument', 'grant_id'}
  end
  if opts.kind ~= 'paid' and opts.kind ~= 'promotional' then return {'bad_argument', 'kind'} end
  if opts.expires_at and opts.expires_at <= now then return {'bad_argument', 'expires_at'} end
  if not opts.max_grants then return {'bad_argument', 'max_grants'} end
end
local bad = wrong_type({{KEYS[1], 'hash'}, {KEYS[2], 'hash'}, {KEYS[3], 'list'},
  {KEYS[4], 'hash'}, {KEYS[5], 'hash'}, {KEYS[6], 'zset'}})
-- @include alerts
local alert_keys = {user = KEYS[1], log = KEYS[7], webhooks = KEYS[8]}
bad = bad or alerts_wrong_type(alert_keys, 6)
  or (KEYS[9] and wrong_type({{KEYS[9], 'zset'}}) and 9) or nil
if bad then return {'wrong_type', bad} end
local user = redis.call('HMGET', KEYS[1], 'available', 'reserved', 'spent', 'granted')
if not user[1] then return {'not_found'} end
if redis.call('HEXISTS', KEYS[2], 'grant:' .. ARGV[2]) == 1 then
  return {'already', user[1], user[2], user[3], user[4]}
end
local available = tonumber(user[1]) + amount
if available < 0 then return {'insufficient_credits', user[1], user[2], user[3], user[4]} end
if amount > 0 and redis.call('HLEN', KEYS[5]) >= opts.max_grants then
  return {'too_many_grants', user[1], user[2], user[3], user[4]}
end
local granted = tonumber(user[4]) + amount
if amount > 0 then
  local expires = opts.expires_at or 0
  grant_write(KEYS[5], KEYS[6], ARGV[1], {id = opts.grant_id, k = opts.kind, a = amount,
    r = amount, h = 0, c = 0, x = 0, m = 0, e = expires, t = now})
  if expires > 0 then redis.call('ZADD', KEYS[6], expires, ARGV[1] .. ':' .. opts.grant_id) end
  if expires > 0 and KEYS[9] then  -- credits.expiring, 24 h before (at once when sooner)
    redis.call('ZADD', KEYS[9], expires - 86400000, ARGV[1] .. ':' .. opts.grant_id)
  end
elseif amount < 0 then
  grants_remove(KEYS[5], KEYS[6], ARGV[1], 0 - amount)
end
redis.call('HSET', KEYS[1], 'available', available, 'granted', granted)
alerts_after(alert_keys, ARGV[1], now, opts.min_price)
redis.call('HSET', KEYS[2], 'grant:' .. ARGV[2], amount)
-- A new grant's entry names it: the flusher writes its credit_grants row with the entry.
redis.call('RPUSH', KEYS[3], cjson.encode({id = 'grant:' .. ARGV[1] .. ':' .. ARGV[2],
  user_id = ARGV[1], kind = 'grant', amount = amount, reason = ARGV[4], at = now,
  grant_id = amount > 0 and opts.grant_id or nil, grant_kind = amount > 0 and opts.kind or nil,
  expires_at = amount > 0 and opts.expires_at or nil}))
if amount > 0 then stats_add(KEYS[4], 'credits:granted', amount) end
if amount < 0 then stats_add(KEYS[4], 'credits:revoked', 0 - amount) end
return {'ok', available, user[2], user[3], granted}
