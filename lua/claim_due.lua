-- claim_due: one bucket's overdue work, at most ARGV[2] entries of each kind. Each entry
-- returned is pushed ARGV[3] ms into the future, so a second sweeper skips it and a
-- sweeper that crashes before handling it finds it again later.
--
-- KEYS[1] holds   bucket holds   (created/uploaded jobs by hold deadline)
-- KEYS[2] leases  bucket leases  (running jobs by lease deadline)
-- KEYS[3] queued  bucket queued  (queued jobs by time last (re)queued)
-- KEYS[4] flush   bucket flush   (finished jobs by flush due time)
--
-- ARGV[1] now ms  ARGV[2] limit per kind  ARGV[3] claim_ms: claim for that long
-- ARGV[4] requeue_before: requeue queued jobs queued before this ms
--
-- Returns {expired_holds, expired_leases, stale_queued, due_flushes}, four lists of job ids;
-- an error reply 'claim_due: wrong_type <n>' when the n-th key holds another type (nothing
-- claimed)
-- @include key_types
local now, limit, claim_for = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local requeue_before = tonumber(ARGV[4])
-- A limit below 1 would be no bound at all: ZRANGEBYSCORE ... LIMIT 0 -1 returns everything.
if not now or not limit or not claim_for or not requeue_before or limit < 1 or limit % 1 ~= 0 then
  return redis.error_reply('claim_due: bad arguments')
end
local bad = wrong_type({{KEYS[1], 'zset'}, {KEYS[2], 'zset'}, {KEYS[3], 'zset'},
  {KEYS[4], 'zset'}})
if bad then return redis.error_reply('claim_due: wrong_type ' .. bad) end

local function claim(key, upto, next_score)
  local ids = redis.call('ZRANGEBYSCORE', key, '-inf', upto, 'LIMIT', 0, limit)
  for _, id in ipairs(ids) do redis.call('ZADD', key, next_score, id) end
  return ids
end

return {
  claim(KEYS[1], now, now + claim_for),
  claim(KEYS[2], now, now + claim_for),
  claim(KEYS[3], requeue_before, now),
  claim(KEYS[4], now, now + claim_for),
}
