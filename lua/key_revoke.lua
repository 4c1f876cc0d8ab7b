-- key_revoke: remove an API key's record, free its slot and drop its period spend.
-- Idempotent by key id. Jobs it made keep their key_id; their refunds find no counter.
--
-- KEYS[1] apikeys    user's keys      tg:{b}:user:<uid>:apikeys
-- KEYS[2] record     key record       tg:{b}:user:<uid>:apikey:<key id>
-- KEYS[3] key_spend  user key spend   tg:{b}:user:<uid>:key-spend
--
-- ARGV[1] key_id
--
-- Returns {code} with code 'ok' | 'already' (no such key stored)
local key_id = ARGV[1]
local removed = redis.call('SREM', KEYS[1], key_id)
redis.call('DEL', KEYS[2])
redis.call('HDEL', KEYS[3], key_id .. ':p', key_id .. ':s')
if removed == 1 then return {'ok'} end
return {'already'}
