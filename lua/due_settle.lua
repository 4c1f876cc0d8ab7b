-- due_settle: a bucket's next due time into its due-index shard, after a visit (or a
-- safety-net read) computed it with bucket_next_due.
--
-- KEYS[1] due_index  the bucket's due-index shard  tg:due:{dN}
--
-- ARGV[1] bucket  ARGV[2] placeholder this visit set ('' : any placeholder, i.e. a
-- score >= ARGV[4])  ARGV[3] next_due ms (-1: nothing to do)
-- ARGV[4] placeholder_floor: the lowest placeholder
--
-- Still at our placeholder: nobody wrote to the bucket since the visit began, so the
-- computed time replaces it (or the bucket leaves the index). Anything else: a write came
-- in (its ZADD LT lowered the score) or another flusher settled it; the score only goes
-- down (ZADD LT), so no write's mark is ever lost.
-- Returns {code, outcome}: {'ok', 'set' | 'removed' | 'lowered' | 'kept'}
local next_due, floor = tonumber(ARGV[3]), tonumber(ARGV[4])
if not next_due or not floor then return redis.error_reply('due_settle: bad arguments') end
local score = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]) or '')
local ours = score ~= nil and ((ARGV[2] == '' and score >= floor)
                               or (ARGV[2] ~= '' and score == tonumber(ARGV[2])))
if ours then
  if next_due < 0 then
    redis.call('ZREM', KEYS[1], ARGV[1])
    return {'ok', 'removed'}
  end
  redis.call('ZADD', KEYS[1], next_due, ARGV[1])
  return {'ok', 'set'}
end
if next_due >= 0 then
  redis.call('ZADD', KEYS[1], 'LT', next_due, ARGV[1])
  return {'ok', 'lowered'}
end
return {'ok', 'kept'}
