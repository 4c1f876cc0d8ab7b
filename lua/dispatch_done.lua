-- dispatch_done: the second step of a dispatch (dispatch_take.lua): the claimed batches
-- are in RQ. Moves the job's next batch and its virtual tag on, gives it its new place in
-- the waiting set (or takes it out when every batch is handed), and renews a running
-- job's lease: its next batch waits in tollgate's order, not on a worker.
--
-- KEYS[1] job      job hash        tg:{b}:job:<jid>
-- KEYS[2] waiting  bucket waiting  tg:{b}:waiting
-- KEYS[3] leases   bucket leases   tg:{b}:leases
--
-- ARGV[1] job_id  ARGV[2] first  ARGV[3] last: the claimed batches  ARGV[4] now ms
-- ARGV[5] lease_until: a running job's lease deadline ms
--
-- Returns {code, score, items, first_dispatch, queued_at, vtag, priority} with code one of
--   'ok'           score: its new place ('' when no batch is left), items: items still
--                  waiting, first_dispatch: 1 when these were its first batches,
--                  vtag: the virtual tag of the first batch handed (decimal strings)
--   'already'      confirmed before
--   'gone'         the job ended meanwhile (its batches must leave RQ again)
--   'not_claimed'  no such claim
--   'bad_argument' | 'wrong_type'
-- @include key_types
local BANDS = {high = 0, normal = 1, low = 2}
local BAND_WIDTH = 1e12
local job_id = ARGV[1]
local first, last = tonumber(ARGV[2]), tonumber(ARGV[3])
local now, lease_until = tonumber(ARGV[4]), tonumber(ARGV[5])
if not first or not last or not now or not lease_until then return {'bad_argument', 'args'} end
local bad = wrong_type({{KEYS[1], 'hash'}, {KEYS[2], 'zset'}, {KEYS[3], 'zset'}})
if bad then return {'wrong_type', bad} end

local job = redis.call('HMGET', KEYS[1], 'state', 'next_batch', 'batches', 'vtag', 'weight',
  'batch_size', 'total', 'claim_first', 'claim_last', 'priority', 'queued_at',
  'dispatched_at')
local state, next_batch = job[1], tonumber(job[2])
if not state then return {'gone'} end
if next_batch and next_batch >= last then return {'already'} end
if tonumber(job[8]) ~= first or tonumber(job[9]) ~= last then return {'not_claimed'} end
local batches, vtag, weight = tonumber(job[3]), tonumber(job[4]), tonumber(job[5])
local size, total = tonumber(job[6]), tonumber(job[7])
local handed_to = math.min(last * size, total)
local new_vtag = vtag + (handed_to - first * size) / weight
redis.call('HSET', KEYS[1], 'next_batch', last, 'vtag', string.format('%.17g', new_vtag))
redis.call('HDEL', KEYS[1], 'claim_until', 'claim_first', 'claim_last')
local first_dispatch = 0
if not job[12] then
  first_dispatch = 1
  redis.call('HSET', KEYS[1], 'dispatched_at', now)
end
if state ~= 'queued' and state ~= 'running' then
  redis.call('ZREM', KEYS[2], job_id)
  return {'gone'}
end
local score = ''
if last >= batches then
  redis.call('ZREM', KEYS[2], job_id)
else
  local place = (BANDS[job[10] or 'normal'] or 1) * BAND_WIDTH + new_vtag
  redis.call('ZADD', KEYS[2], place, job_id)
  score = string.format('%.17g', place)
end
if state == 'running' then
  local lease = tonumber(redis.call('ZSCORE', KEYS[3], job_id))
  if lease and lease < lease_until then redis.call('ZADD', KEYS[3], lease_until, job_id) end
end
return {'ok', score, total - handed_to, first_dispatch, job[11] or '',
  string.format('%.17g', vtag), job[10] or 'normal'}
