-- flush_retry_later: SQL refused one record of a flush (a finished job or a ledger entry).
-- Count the attempt and put the record back for a later pass with a growing delay, or say
-- that its attempts are used up (the flusher then sets it aside in SQL's flush_failures).
-- Either way the rest of the bucket's work goes on without it.
--
-- KEYS[1] flush_attempts  bucket flush attempts  tg:{b}:flush-attempts  (`<kind>:<id>` ->
--                         attempts so far, `<kind>:<id>:first` -> first failure ms)
-- KEYS[2] flush           bucket flush           tg:{b}:flush           (finished jobs by flush due time)
-- KEYS[3] ledger_retry    bucket ledger retry    tg:{b}:ledger-retry    (refused ledger entries by due time)
--
-- ARGV[1] kind: 'job' | 'ledger'   ARGV[2] record_id (job id or ledger entry id)
-- ARGV[3] entry: the ledger entry as read from the ledger list ('' for a job)
-- ARGV[4] now ms   ARGV[5] attempts_allowed (>= 1)   ARGV[6] delay_ms of the first retry (doubles)
--
-- Returns {code, attempts, first_failed_ms} with code
--   'ok'        (the record comes back after the delay: a job in the flush zset (only if it
--                is still there), a ledger entry in the ledger retry zset)
--   'exhausted' (this was the last attempt: nothing is rescheduled)
--   | {'bad_argument', what}
--   | 'wrong_type' ({code, n}: the n-th key checked holds another type; nothing written)
-- @include key_types
local kind, id, entry = ARGV[1], ARGV[2], ARGV[3]
local now, allowed, delay = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
if kind ~= 'job' and kind ~= 'ledger' then return {'bad_argument', 'kind'} end
if id == '' then return {'bad_argument', 'id'} end
if kind == 'ledger' and entry == '' then return {'bad_argument', 'entry'} end
if not now or not allowed or not delay or allowed < 1 or delay < 0 then
  return {'bad_argument', 'numbers'}
end
local bad = wrong_type({{KEYS[1], 'hash'}, {KEYS[2], 'zset'}, {KEYS[3], 'zset'}})
if bad then return {'wrong_type', bad} end
local field = kind .. ':' .. id
local before = redis.call('HGET', KEYS[1], field)
local attempts = (tonumber(before) or 0) + 1
local first = tonumber(redis.call('HGET', KEYS[1], field .. ':first')) or now

redis.call('HSET', KEYS[1], field, attempts, field .. ':first', first)
if attempts >= allowed then return {'exhausted', attempts, first} end
-- At most an hour between attempts, however many are allowed.
local due = now + math.min(delay * 2 ^ (attempts - 1), 3600000)
if kind == 'job' then
  redis.call('ZADD', KEYS[2], 'XX', due, id)
else
  redis.call('ZADD', KEYS[3], due, entry)
end
return {'ok', attempts, first}
