-- admit: execute a job: move it uploaded -> queued and put it in its bucket's waiting set
-- with its place in the dispatch order (docs/scheduling.md). The place is the job's
-- priority band plus its virtual start tag: the later of the queue's virtual time and the
-- end tag of the owner's earlier work at that priority (start-time fair queueing, weighted
-- by the owner's plan). Repeating it on a queued job answers 'already' with its place.
--
-- KEYS[1] job          job hash             tg:{b}:job:<jid>
-- KEYS[2] holds        bucket holds         tg:{b}:holds
-- KEYS[3] queued       bucket queued        tg:{b}:queued
-- KEYS[4] waiting      bucket waiting       tg:{b}:waiting   (zset job id -> dispatch order)
-- KEYS[5] user         user hash            tg:{b}:user:<uid>  (its 'vt:<queue>:<priority>')
-- KEYS[6] webhook_log  job webhook log
-- KEYS[7] webhooks     bucket webhooks (the outbox, includes/outbox.lua)
--
-- ARGV[1] job_id  ARGV[2] owner  ARGV[3] now ms  ARGV[4] queue: the model's RQ queue
-- ARGV[5] vtime: the queue's virtual time at the job's priority (sched_order.lua)
-- ARGV[6] batch_size  ARGV[7] weights: plan weights, 'free=1,pro=4'
--
-- Returns {code, state, score, batches, deadline} with code one of
--   'ok'                  queued and waiting; score: its place (a decimal string)
--   'already'             already queued or running: its place ('' when none is left)
--   'invalid_transition'  the job is in another state
--   'not_found'           no such job (or another owner's)
--   'bad_argument'        {code, name}
--   'wrong_type'          {code, n}: the n-th key checked holds another type; nothing written
-- deadline: the job's start deadline ms, or ''.
-- @include outbox
-- @include key_types
local BANDS = {high = 0, normal = 1, low = 2}
local BAND_WIDTH = 1e12
local job_id, owner, queue = ARGV[1], ARGV[2], ARGV[4]
local now, vtime, batch_size = tonumber(ARGV[3]), tonumber(ARGV[5]), tonumber(ARGV[6])
if not now or not vtime then return {'bad_argument', 'time'} end
if not batch_size or batch_size < 1 or batch_size % 1 ~= 0 then
  return {'bad_argument', 'batch_size'}
end
local weights = {}
for plan, weight in string.gmatch(ARGV[7], '([%w_-]+)=([%d.]+)') do
  weights[plan] = tonumber(weight)
end
local bad = wrong_type({{KEYS[1], 'hash'}, {KEYS[2], 'zset'}, {KEYS[3], 'zset'},
  {KEYS[4], 'zset'}, {KEYS[5], 'hash'}, {KEYS[6], 'hash'}, {KEYS[7], 'zset'}})
if bad then return {'wrong_type', bad} end

local job = redis.call('HMGET', KEYS[1], 'state', 'owner', 'total', 'priority',
  'start_deadline')
if not job[1] or job[2] ~= owner then return {'not_found'} end
local state, deadline = job[1], job[5] or ''
if state == 'queued' or state == 'running' then
  local score = redis.call('ZSCORE', KEYS[4], job_id)
  return {'already', state, score or '', 0, deadline}
end
if state ~= 'uploaded' then return {'invalid_transition', state} end

local total = tonumber(job[3])
local priority = job[4] or 'normal'
local band = BANDS[priority] or 1
local weight = weights[redis.call('HGET', KEYS[5], 'plan') or ''] or 1
if weight <= 0 then weight = 1 end
local field = 'vt:' .. queue .. ':' .. priority
local start = tonumber(redis.call('HGET', KEYS[5], field)) or 0
if start < vtime then start = vtime end
local batches = math.ceil(total / batch_size)
local score = band * BAND_WIDTH + start
redis.call('HSET', KEYS[5], field, string.format('%.17g', start + total / weight))
redis.call('HSET', KEYS[1], 'state', 'queued', 'updated_at', now, 'queued_at', now,
  'queue', queue, 'vtag', string.format('%.17g', start), 'weight', weight,
  'batches', batches, 'batch_size', batch_size, 'next_batch', 0)
redis.call('ZREM', KEYS[2], job_id)
redis.call('ZADD', KEYS[3], now, job_id)
redis.call('ZADD', KEYS[4], score, job_id)
job_changed({job = KEYS[1], hooks = KEYS[6], webhooks = KEYS[7]}, job_id, nil, now)
return {'ok', 'queued', string.format('%.17g', score), batches, deadline}
