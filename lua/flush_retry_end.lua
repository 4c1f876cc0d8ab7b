-- flush_retry_end: a record SQL had refused is done with: written after all, or set aside
-- in SQL's flush_failures. Forget its attempts, take a ledger entry out of the retry zset,
-- and count a set-aside record for the tollgate_flush_failures_total metric.
--
-- KEYS[1] flush_attempts  bucket flush attempts  tg:{b}:flush-attempts
-- KEYS[2] ledger_retry    bucket ledger retry    tg:{b}:ledger-retry
-- KEYS[3] counters        bucket counters        tg:{b}:counters  (field flush_failures)
--
-- ARGV[1] kind: 'job' | 'ledger'   ARGV[2] record_id
-- ARGV[3] entry: the ledger entry as read ('' for a job)
-- ARGV[4] set_aside: '1' set aside | '0' written
--
-- Returns {code}: {'ok'} | {'bad_argument', what}
--   | 'wrong_type' ({code, n}: the n-th key checked holds another type; nothing written)
-- @include key_types
local kind, id, entry, set_aside = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if kind ~= 'job' and kind ~= 'ledger' then return {'bad_argument', 'kind'} end
if set_aside ~= '0' and set_aside ~= '1' then return {'bad_argument', 'set_aside'} end
local bad = wrong_type({{KEYS[1], 'hash'}, {KEYS[2], 'zset'}, {KEYS[3], 'hash'}})
if bad then return {'wrong_type', bad} end
local field = kind .. ':' .. id
redis.call('HDEL', KEYS[1], field, field .. ':first')
if kind == 'ledger' and entry ~= '' then redis.call('ZREM', KEYS[2], entry) end
if set_aside == '1' then redis.call('HINCRBY', KEYS[3], 'flush_failures', 1) end
return {'ok'}
