-- rule_slot_take: take one of the user's rule slots for a rule id. Idempotent by rule id.
--
-- KEYS[1] user   user hash   tg:{b}:user:<uid>
-- KEYS[2] rules  user rules  tg:{b}:user:<uid>:rules  (set of rule ids; slots used = SCARD)
--
-- ARGV[1] rule_id
--
-- Returns {code, used, limit} with code one of
--   'ok' | 'already' (this rule holds a slot) | 'rule_slots_exhausted' | 'not_found' (user)
local limit = redis.call('HGET', KEYS[1], 'max_rules')
if not limit then return {'not_found', 0, 0} end
limit = tonumber(limit)
local used = redis.call('SCARD', KEYS[2])
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then return {'already', used, limit} end
if used >= limit then return {'rule_slots_exhausted', used, limit} end
redis.call('SADD', KEYS[2], ARGV[1])
return {'ok', used + 1, limit}
