-- mark_in_sql: the flusher wrote these finished jobs' rows (jobs_log, release, charge) to
-- SQL before their flush: on the first pass after each ended, while its Redis record stays
-- TOLLGATE_FLUSH_DELAY longer for reads. Each job hash gets the field `in_sql` (the ms of
-- the commit), so its flush writes only what may have changed since (its webhook delivery
-- log), not the same rows a second time. Set only on a hash that exists and is final: a
-- flushed (deleted) job is never re-created as a stray one-field hash.
--
-- KEYS[1..] jobs  job hashes, all of one bucket (one hash slot)
--
-- ARGV[1] at  ms the rows were committed
--
-- Returns the number of hashes marked; an error reply 'mark_in_sql: wrong_type <n>' when the
-- n-th key holds another type (nothing marked)
-- @include key_types
if not tonumber(ARGV[1]) then return redis.error_reply('mark_in_sql: bad arguments') end
local expected = {}
for i, key in ipairs(KEYS) do expected[i] = {key, 'hash'} end
local bad = wrong_type(expected)
if bad then return redis.error_reply('mark_in_sql: wrong_type ' .. bad) end
local marked = 0
for _, key in ipairs(KEYS) do
  local state = redis.call('HGET', key, 'state')
  if state == 'done' or state == 'failed' or state == 'canceled' then
    redis.call('HSET', key, 'in_sql', ARGV[1])
    marked = marked + 1
  end
end
return marked
