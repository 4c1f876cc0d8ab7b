-- ledger_ack: drop the first ARGV[1] ledger entries after they reached SQL, but only if
-- the list still starts with the entry the flusher read (another flusher may have won).
--
-- KEYS[1] ledger  bucket ledger  tg:{b}:ledger
--
-- ARGV[1] count  ARGV[2] first_entry as read
--
-- Returns {code} with code 'ok' (trimmed) | 'already' (someone else trimmed)
--   | 'bad_argument' (count not a whole number >= 1)
local count = tonumber(ARGV[1])
if not count or count < 1 or count % 1 ~= 0 then return {'bad_argument', 'count'} end
if redis.call('LINDEX', KEYS[1], 0) ~= ARGV[2] then return {'already'} end
redis.call('LTRIM', KEYS[1], count, -1)
return {'ok'}
