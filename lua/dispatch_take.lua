-- dispatch_take: claim the next batches of a waiting job for the dispatcher
-- (service/flusher/dispatcher.py), the first of its two steps. The claim is only a
-- promise: the job keeps its place until dispatch_done confirms the batches reached RQ. A
-- dispatcher killed between the two leaves the claim to expire; the next take answers the
-- same batches again ('retry'), and RQ's deterministic ids keep each batch there once.
--
-- KEYS[1] job      job hash        tg:{b}:job:<jid>
-- KEYS[2] waiting  bucket waiting  tg:{b}:waiting   (zset job id -> dispatch order)
--
-- ARGV[1] job_id  ARGV[2] now ms  ARGV[3] claim_ms: the claim's life
-- ARGV[4] most: batches at most (0: only an expired claim's)  ARGV[5] before: take further batches while their place
--   is at most this ('' for no bound; the first batch is always taken)
--
-- Returns {code, first, last, priority} (batches first .. last - 1) with code one of
--   'take'     claimed now   'retry'  an expired claim's batches, claimed again
--   'claimed'  another dispatcher's claim is live: leave the job
--   'none'     most was 0 and no claim is there
--   'gone'     nothing to dispatch (no job, not live, every batch handed); out of waiting
--   'bad_argument' | 'wrong_type'
-- @include key_types
local BANDS = {high = 0, normal = 1, low = 2}
local BAND_WIDTH = 1e12
local job_id = ARGV[1]
local now, claim_ms, most = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local before = tonumber(ARGV[5])
if not now or not claim_ms or not most or most < 0 then return {'bad_argument', 'args'} end
local bad = wrong_type({{KEYS[1], 'hash'}, {KEYS[2], 'zset'}})
if bad then return {'wrong_type', bad} end

local job = redis.call('HMGET', KEYS[1], 'state', 'next_batch', 'batches', 'vtag', 'weight',
  'batch_size', 'total', 'claim_until', 'claim_first', 'claim_last', 'priority')
local state = job[1]
local next_batch, batches = tonumber(job[2]), tonumber(job[3])
if (state ~= 'queued' and state ~= 'running') or not next_batch or next_batch >= batches then
  redis.call('ZREM', KEYS[2], job_id)
  return {'gone', 0, 0, ''}
end
local claim_until = tonumber(job[8])
if claim_until then
  if claim_until > now then return {'claimed', tonumber(job[9]), tonumber(job[10]), ''} end
  redis.call('HSET', KEYS[1], 'claim_until', now + claim_ms)
  return {'retry', tonumber(job[9]), tonumber(job[10]), job[11] or 'normal'}
end
if most == 0 then return {'none', 0, 0, ''} end
local vtag, weight, size = tonumber(job[4]), tonumber(job[5]), tonumber(job[6])
local band = (BANDS[job[11] or 'normal'] or 1) * BAND_WIDTH
local last = next_batch + 1
while last < batches and last - next_batch < most
    and (not before or band + vtag + (last - next_batch) * size / weight <= before) do
  last = last + 1
end
redis.call('HSET', KEYS[1], 'claim_until', now + claim_ms, 'claim_first', next_batch,
  'claim_last', last)
return {'take', next_batch, last, job[11] or 'normal'}
