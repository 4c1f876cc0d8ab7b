-- ensure_user: provision a user with a plan and a balance, once. A new user comes with its
-- starting credits (and, pushed here when ARGV[9] = '1', its 'signup:<uid>' ledger entry);
-- a user Redis lost is rebuilt from the SQL ledger (available, spent, granted, no entry).
--
-- KEYS[1] user hash      tg:{b}:user:<uid>
-- KEYS[2] bucket ledger  tg:{b}:ledger
-- KEYS[3] bucket counters tg:{b}:counters (includes/stats.lua: credits:granted)
--
-- ARGV[1] user id  ARGV[2] plan  ARGV[3] available credits  ARGV[4] max active jobs
-- ARGV[5] max rule slots  ARGV[6] now ms  ARGV[7] spent  ARGV[8] granted
-- ARGV[9] '1' to push the signup ledger entry (+available)
-- ARGV[10] signup credits SQL's ledger got for this new user (counted as granted; optional)
--
-- Returns {code} with code 'ok' (created) | 'already' (exists) | 'bad_argument'
--   | 'wrong_type' ({code, n}: the n-th key checked holds another type; nothing written)
-- @include stats
-- @include key_types
local credits, max_active, max_rules = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local now, spent, granted = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
if not credits or credits < 0 or credits % 1 ~= 0 then return {'bad_argument', 'credits'} end
if not spent or spent < 0 or spent % 1 ~= 0 or not granted or granted % 1 ~= 0
    or granted ~= credits + spent then
  return {'bad_argument', 'balance'}
end
if not max_active or not max_rules or not now then return {'bad_argument', 'limits'} end
local signup = credits
if ARGV[9] ~= '1' then signup = tonumber(ARGV[10] or '0') or 0 end
local bad = wrong_type({{KEYS[1], 'hash'}, {KEYS[2], 'list'}, {KEYS[3], 'hash'}})
if bad then return {'wrong_type', bad} end
if redis.call('EXISTS', KEYS[1]) == 1 then return {'already'} end
redis.call('HSET', KEYS[1], 'plan', ARGV[2], 'available', credits, 'reserved', 0,
  'spent', spent, 'granted', granted, 'max_active', max_active, 'max_rules', max_rules,
  'created_at', now)
if credits > 0 and ARGV[9] == '1' then
  redis.call('RPUSH', KEYS[2], cjson.encode({id = 'signup:' .. ARGV[1], user_id = ARGV[1],
    kind = 'grant', amount = credits, reason = 'signup', at = now}))
end
if signup > 0 then stats_add(KEYS[3], 'credits:granted', signup) end
return {'ok'}
