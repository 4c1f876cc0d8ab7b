-- set_plan: an admin moves a user to another plan and its limits. Idempotent by
-- operation id; lowering a limit below current use refuses new work, never old work.
--
-- KEYS[1] user  user hash  tg:{b}:user:<uid>
-- KEYS[2] ops   user ops   tg:{b}:user:<uid>:ops
--
-- ARGV[1] op_id: the operation id  ARGV[2] plan  ARGV[3] max_active jobs
-- ARGV[4] max_rules: rule slots
--
-- Returns {code, plan} with code 'ok' | 'already' | 'not_found' | 'bad_argument'
--   | 'wrong_type' ({code, n}: the n-th key checked holds another type; nothing written)
-- @include key_types
local max_active, max_rules = tonumber(ARGV[3]), tonumber(ARGV[4])
if not max_active or not max_rules then return {'bad_argument', 'limits'} end
local bad = wrong_type({{KEYS[1], 'hash'}, {KEYS[2], 'hash'}})
if bad then return {'wrong_type', bad} end
if redis.call('EXISTS', KEYS[1]) == 0 then return {'not_found'} end
if redis.call('HEXISTS', KEYS[2], 'plan:' .. ARGV[1]) == 1 then
  return {'already', redis.call('HGET', KEYS[1], 'plan')}
end
redis.call('HSET', KEYS[1], 'plan', ARGV[2], 'max_active', max_active, 'max_rules', max_rules)
redis.call('HSET', KEYS[2], 'plan:' .. ARGV[1], ARGV[2])
return {'ok', ARGV[2]}
