-- ensure_user: provision a user with a plan and a balance, once. A new user comes with its
-- starting credits and its 'signup:<uid>' ledger entry; a user Redis lost is restored from
-- the SQL ledger (available, spent, granted; no entry: SQL has them).
--
-- KEYS[1] user      user hash       tg:{b}:user:<uid>
-- KEYS[2] ledger    bucket ledger   tg:{b}:ledger
-- KEYS[3] counters  bucket counters tg:{b}:counters (includes/stats.lua: credits:granted)
-- KEYS[4] grants    user grants     tg:{b}:user:<uid>:grants (includes/grants.lua)
-- KEYS[5] grant_expiry  bucket grant expiry  tg:{b}:grant-expiry (includes/grants.lua)
-- KEYS[6] grant_warn    bucket grant warning tg:{b}:grant-warn (lua/grants_warn.lua): a
--                       restored grant whose credits.expiring is not due yet gets its entry
--                       back (one already due may have been sent before the loss: not again)
--
-- ARGV[1] user_id  ARGV[2] plan  ARGV[3] available credits  ARGV[4] max_active jobs
-- ARGV[5] max_rules (rule slots)  ARGV[6] now ms
-- ARGV[7] opts, one JSON object (includes/opts.lua); {} for a new user. A restored one:
--     restored        true: no signup ledger entry is pushed
--     spent, granted  its totals (default 0 and ARGV[3]; granted = available + spent)
--     signup_credits  the signup credits SQL's ledger got for it (counted as granted)
--     signup_grant    a new user's signup grant id: its credits are a promotional grant
--                     with no expiry (includes/grants.lua)
--     expired         credits the rebuild expired in SQL (counted in credits:expire)
--     grants          a restored user's grants as SQL rebuilt them, a JSON list of
--                     {id, k, a, r, c, x, m, e, t} (includes/grants.lua; h is 0: no job
--                     survived the loss)
--
-- Returns {code} with code 'ok' (created) | 'already' (exists) | 'bad_argument'
--   | 'wrong_type' ({code, n}: the n-th key checked holds another type; nothing written)
-- @include stats
-- @include key_types
-- @include opts
-- @include grants
local credits, max_active, max_rules = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local now = tonumber(ARGV[6])
if not credits or credits < 0 or credits % 1 ~= 0 then return {'bad_argument', 'credits'} end
local opts, bad_opt = read_opts(ARGV[7], {restored = 'boolean', spent = 'whole',
                                          granted = 'whole', signup_credits = 'whole',
                                          signup_grant = 'string', grants = 'string',
                                          expired = 'whole'})
if not opts then return {'bad_argument', bad_opt} end
local spent, granted = opts.spent or 0, opts.granted or credits
if spent < 0 or granted ~= credits + spent then return {'bad_argument', 'balance'} end
if not max_active or not max_rules or not now then return {'bad_argument', 'limits'} end
local restored = opts.restored == true
local signup = credits
if restored then signup = opts.signup_credits or 0 end
local restored_grants = {}
if opts.grants then
  local decoded, list = pcall(cjson.decode, opts.grants)
  if not decoded or type(list) ~= 'table' then return {'bad_argument', 'grants'} end
  for _, g in ipairs(list) do
    for _, name in ipairs({'a', 'r', 'c', 'x', 'm', 'e', 't'}) do
      if type(g[name]) ~= 'number' then return {'bad_argument', 'grants'} end
    end
    if type(g.id) ~= 'string' or type(g.k) ~= 'string' then return {'bad_argument', 'grants'} end
    g.h = 0
    restored_grants[#restored_grants + 1] = g
  end
end
local bad = wrong_type({{KEYS[1], 'hash'}, {KEYS[2], 'list'}, {KEYS[3], 'hash'},
  {KEYS[4], 'hash'}, {KEYS[5], 'zset'}, {KEYS[6], 'zset'}})
if bad then return {'wrong_type', bad} end
if redis.call('EXISTS', KEYS[1]) == 1 then return {'already'} end
-- What Redis had of its grants went with the user record: SQL's rebuild replaces it.
redis.call('DEL', KEYS[4])
for _, g in ipairs(restored_grants) do
  grant_write(KEYS[4], KEYS[5], ARGV[1], g)
  if g.e > 0 and g.r > 0 then redis.call('ZADD', KEYS[5], g.e, ARGV[1] .. ':' .. g.id) end
  if g.e > 0 and g.r > 0 and g.e - 86400000 > now then  -- as lua/grant.lua sets it
    redis.call('ZADD', KEYS[6], g.e - 86400000, ARGV[1] .. ':' .. g.id)
  end
end
if credits > 0 and not restored and opts.signup_grant then
  grant_write(KEYS[4], KEYS[5], ARGV[1], {id = opts.signup_grant, k = 'promotional',
    a = credits, r = credits, h = 0, c = 0, x = 0, m = 0, e = 0, t = now})
end
redis.call('HSET', KEYS[1], 'plan', ARGV[2], 'available', credits, 'reserved', 0,
  'spent', spent, 'granted', granted, 'max_active', max_active, 'max_rules', max_rules,
  'created_at', now)
if credits > 0 and not restored then
  redis.call('RPUSH', KEYS[2], cjson.encode({id = 'signup:' .. ARGV[1], user_id = ARGV[1],
    kind = 'grant', amount = credits, reason = 'signup', at = now,
    grant_id = opts.signup_grant, grant_kind = opts.signup_grant and 'promotional' or nil}))
end
if signup > 0 then stats_add(KEYS[3], 'credits:granted', signup) end
if restored and (opts.expired or 0) > 0 then stats_add(KEYS[3], 'credits:expire', opts.expired) end
return {'ok'}
