-- ensure_user: provision a user with a plan and starting credits, once.
--
-- KEYS[1] user hash      tg:{b}:user:<uid>
-- KEYS[2] bucket ledger  tg:{b}:ledger
--
-- ARGV[1] user id  ARGV[2] plan  ARGV[3] starting credits  ARGV[4] max active jobs
-- ARGV[5] max rule slots  ARGV[6] now ms
--
-- Returns {code} with code 'ok' (created) | 'already' (exists) | 'bad_argument'
local credits, max_active, max_rules = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local now = tonumber(ARGV[6])
if not credits or credits < 0 or credits % 1 ~= 0 then return {'bad_argument', 'credits'} end
if not max_active or not max_rules or not now then return {'bad_argument', 'limits'} end
if redis.call('EXISTS', KEYS[1]) == 1 then return {'already'} end
redis.call('HSET', KEYS[1], 'plan', ARGV[2], 'available', credits, 'reserved', 0, 'spent', 0,
  'granted', credits, 'max_active', max_active, 'max_rules', max_rules, 'created_at', now)
if credits > 0 then
  redis.call('RPUSH', KEYS[2], cjson.encode({id = 'signup:' .. ARGV[1], user_id = ARGV[1],
    kind = 'grant', amount = credits, reason = 'signup', at = now}))
end
return {'ok'}
