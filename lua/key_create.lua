-- key_create: store an API key's record in its user's bucket and take one of the plan's key
-- slots for it. Idempotent by key id. Also rebuilds a key SQL holds (a Redis that lost it):
-- then no slot is checked, and the key's period spend is set unless Redis has one.
--
-- KEYS[1] user       user hash        tg:{b}:user:<uid>  (read only: its plan)
-- KEYS[2] apikeys    user's keys      tg:{b}:user:<uid>:apikeys  (set of key ids; slots used = SCARD)
-- KEYS[3] record     key record       tg:{b}:user:<uid>:apikey:<key id>  (hash: user_id, hash,
--                    scopes, cap, period, expires_at; service/state/apikeys.py reads it)
-- KEYS[4] key_spend  user key spend   tg:{b}:user:<uid>:key-spend  (reserve.lua)
--
-- ARGV[1] key_id  ARGV[2] owner (user id)  ARGV[3] secret_hash: sha256 of the secret, hex
-- ARGV[4] scopes (comma separated)  ARGV[5] cap: credits a period, '' for none
-- ARGV[6] period: 'day' | 'month' | ''  ARGV[7] expires_at ms, '' for never
-- ARGV[8] restore: '1' to rebuild a key SQL holds (no slot check), '0' to create one
-- ARGV[9] spent_period  ARGV[10] spent: with restore, the key's period spend SQL counted
--   (the period as reserve.lua numbers it), '' for none
-- ARGV[11..] plan_limits: plan name, key slots pairs; the first pair's also applies to a
--   plan not listed
--
-- Returns {code, used, limit} with code one of
--   'ok' | 'already' (this key id is stored) | 'key_slots_exhausted' | 'not_found' (user)
--   | 'bad_argument' | 'wrong_type' (a key holds another type: nothing written)
-- @include key_types
local key_id, owner = ARGV[1], ARGV[2]
local restore = ARGV[8] == '1'
if key_id == '' or ARGV[3] == '' then return {'bad_argument', 0, 0} end
local bad = wrong_type({{KEYS[2], 'set'}, {KEYS[3], 'hash'}, {KEYS[4], 'hash'}})
if bad then return {'wrong_type', bad, 0} end
local plan = redis.call('HGET', KEYS[1], 'plan')
if not plan and not restore then return {'not_found', 0, 0} end
local limit = tonumber(ARGV[12])
for i = 11, #ARGV - 1, 2 do
  if ARGV[i] == plan then limit = tonumber(ARGV[i + 1]) end
end
if not limit then return {'bad_argument', 0, 0} end
local used = redis.call('SCARD', KEYS[2])
if redis.call('SISMEMBER', KEYS[2], key_id) == 1 then return {'already', used, limit} end
if not restore and used >= limit then return {'key_slots_exhausted', used, limit} end
redis.call('SADD', KEYS[2], key_id)
redis.call('HSET', KEYS[3], 'user_id', owner, 'hash', ARGV[3], 'scopes', ARGV[4],
  'cap', ARGV[5], 'period', ARGV[6], 'expires_at', ARGV[7])
if restore and ARGV[9] ~= '' and redis.call('HEXISTS', KEYS[4], key_id .. ':p') == 0 then
  redis.call('HSET', KEYS[4], key_id .. ':p', ARGV[9], key_id .. ':s', ARGV[10])
end
return {'ok', used + 1, limit}
