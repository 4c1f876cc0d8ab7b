-- rule_slot_release: free the rule slot a rule id holds. Idempotent by rule id.
--
-- KEYS[1] rules  user rules  tg:{b}:user:<uid>:rules
--
-- ARGV[1] rule_id
--
-- Returns {code, used} with code 'ok' (freed) | 'already' (held no slot)
local removed = redis.call('SREM', KEYS[1], ARGV[1])
local used = redis.call('SCARD', KEYS[1])
if removed == 1 then return {'ok', used} end
return {'already', used}
