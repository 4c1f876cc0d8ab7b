-- sched_order: one queue's dispatch order across buckets (service/state/sched.py), written
-- by Python after the bucket's script that placed, moved or ended a job: a script may
-- touch only its own bucket's slot. A crash between the two is mended by the rebuild from
-- the buckets' waiting sets, as the due index is.
--
-- KEYS[1] order      zset   tg:sched:{q:<queue>}:order      job id -> dispatch order
-- KEYS[2] items      hash   tg:sched:{q:<queue>}:items      job id -> items still waiting
-- KEYS[3] info       hash   tg:sched:{q:<queue>}:info       'v:<priority>' virtual time,
--                                                           'items' the sum of `items`
-- KEYS[4] deadlines  zset   tg:sched:{q:<queue>}:deadlines  job id -> start deadline ms
-- KEYS[5] claims     zset   tg:sched:{q:<queue>}:claims     job id -> claim end ms (optional)
-- KEYS[6] waits      hash   tg:sched:{q:<queue>}:waits      the dispatch wait histogram
--                                                           (optional)
--
-- ARGV[1] job_id  ARGV[2] score: its place, '' to take the job out
-- ARGV[3] items: its items still waiting  ARGV[4] deadline ms, or ''
-- ARGV[5] priority  ARGV[6] vtag: a dispatched batch's virtual tag, raises the queue's
--   virtual time at that priority ('' for none)
-- ARGV[7] opts, one JSON object (includes/opts.lua), all optional, for a dispatcher that
--   has just handed batches (service/flusher/dispatcher.py), so that the hand ends in one
--   round trip: claim (boolean) the job's claim ends (KEYS[5]); wait (seconds) and bounds
--   (the histogram's upper bounds, ascending, comma-separated, as the fields name them): the
--   job's first dispatch wait, counted in KEYS[6] at `priority`: in the field of the first
--   bound it is under (`<priority>:in:<bound>`, or `:in:+Inf`; the reader sums them up to
--   each bound), and in `<priority>:count` and `<priority>:sum`
--
-- Returns {code} with code 'ok' | 'bad_argument' | 'wrong_type'
-- @include key_types
-- @include opts
local job_id, score, items = ARGV[1], ARGV[2], tonumber(ARGV[3])
local deadline, vtag = tonumber(ARGV[4]), tonumber(ARGV[6])
if (score ~= '' and not tonumber(score)) or not items then return {'bad_argument'} end
local opts = read_opts(ARGV[7], {claim = 'boolean', wait = 'number', bounds = 'string'})
if not opts or (opts.claim and not KEYS[5]) or (opts.wait and (not KEYS[6] or not opts.bounds))
then
  return {'bad_argument'}
end
local expected = {{KEYS[1], 'zset'}, {KEYS[2], 'hash'}, {KEYS[3], 'hash'}, {KEYS[4], 'zset'}}
if KEYS[5] then expected[5] = {KEYS[5], 'zset'} end
if KEYS[6] then expected[6] = {KEYS[6], 'hash'} end
local bad = wrong_type(expected)
if bad then return {'wrong_type', bad} end

if opts.claim then redis.call('ZREM', KEYS[5], job_id) end
if opts.wait then
  local priority = ARGV[5]
  local slot = '+Inf'
  for bound in string.gmatch(opts.bounds, '[^,]+') do
    if opts.wait <= (tonumber(bound) or 0) then slot = bound; break end
  end
  redis.call('HINCRBY', KEYS[6], priority .. ':in:' .. slot, 1)
  redis.call('HINCRBY', KEYS[6], priority .. ':count', 1)
  redis.call('HINCRBYFLOAT', KEYS[6], priority .. ':sum', string.format('%.6f', opts.wait))
end

local before = tonumber(redis.call('HGET', KEYS[2], job_id)) or 0
if score == '' then
  redis.call('ZREM', KEYS[1], job_id)
  redis.call('ZREM', KEYS[4], job_id)
  redis.call('HDEL', KEYS[2], job_id)
  redis.call('HINCRBY', KEYS[3], 'items', 0 - before)
else
  redis.call('ZADD', KEYS[1], score, job_id)
  redis.call('HSET', KEYS[2], job_id, items)
  redis.call('HINCRBY', KEYS[3], 'items', items - before)
  if deadline then redis.call('ZADD', KEYS[4], deadline, job_id) end
end
if vtag then
  local field = 'v:' .. ARGV[5]
  local now_v = tonumber(redis.call('HGET', KEYS[3], field))
  if not now_v or vtag > now_v then
    redis.call('HSET', KEYS[3], field, string.format('%.17g', vtag))
  end
end
return {'ok'}
