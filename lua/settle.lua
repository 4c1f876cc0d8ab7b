-- settle: end a live job as 'done' or 'failed' (worker gave up, lease ran out, queued job
-- never started): charge the succeeded items, refund the rest, free the concurrency slot,
-- schedule the flush. Repeating a settle that already happened answers 'already'.
--
-- KEYS[1] job      job hash       KEYS[2] user    user hash     KEYS[3] active  user active set
-- KEYS[4] holds    bucket holds   KEYS[5] leases  bucket leases  KEYS[6] queued  bucket queued
-- KEYS[7] flush    bucket flush   KEYS[8] ledger  bucket ledger
-- KEYS[9] webhook_log  job webhook log
-- KEYS[10] webhooks    bucket webhooks (the outbox, includes/outbox.lua)
-- KEYS[11] counters    bucket counters tg:{b}:counters (includes/stats.lua)
-- KEYS[12] key_spend   owner's API key spend  tg:{b}:user:<uid>:key-spend (includes/finish_job.lua)
-- KEYS[13] grants      owner's grants  tg:{b}:user:<uid>:grants (includes/grants.lua)
-- KEYS[14] grant_expiry  bucket grant expiry  tg:{b}:grant-expiry (includes/grants.lua)
--
-- ARGV[1] job_id  ARGV[2] owner  ARGV[3] to_state ('done' | 'failed')
-- ARGV[4] from_states allowed, comma separated: 'queued' and/or 'running' only
-- ARGV[5] reason  ARGV[6] now ms  ARGV[7] flush_due ms
--
-- Returns {code, state, done, failed, total, charged, refunded} with code one of
--   'ok' | 'already' (already in the target state) | 'invalid_transition' | 'not_found'
--   | 'bad_argument'
--   | 'wrong_type' (a key holds another type: nothing written)
-- @include finish_job
local job_id, owner, to, reason = ARGV[1], ARGV[2], ARGV[3], ARGV[5]
local now, flush_due = tonumber(ARGV[6]), tonumber(ARGV[7])
if to ~= 'done' and to ~= 'failed' then return {'bad_argument', 'to'} end
if not now or not flush_due then return {'bad_argument', 'time'} end
local allowed = {}
for state in string.gmatch(ARGV[4], '[^,]+') do
  if TERMINAL[state] then return {'bad_argument', 'from'} end
  allowed[state] = true
end

local k = {job = KEYS[1], user = KEYS[2], active = KEYS[3], holds = KEYS[4], leases = KEYS[5],
  queued = KEYS[6], flush = KEYS[7], ledger = KEYS[8], hooks = KEYS[9], webhooks = KEYS[10],
  stats = KEYS[11], key_spend = KEYS[12], grants = KEYS[13],
  grant_expiry = KEYS[14]}
local bad = finish_job_wrong_type(k)
if bad then return {'wrong_type', bad} end

local job = redis.call('HMGET', KEYS[1], 'state', 'owner', 'done', 'failed', 'total',
  'price', 'cost', 'charged', 'refunded')
if not job[1] or job[2] ~= owner then return {'not_found'} end
local state = job[1]
if state == to then return {'already', state, job[3], job[4], job[5], job[8], job[9]} end
-- Only a job handed to the workers can end as done or failed: before that, it is canceled.
if not allowed[state] or (state ~= 'queued' and state ~= 'running') then
  return {'invalid_transition', state, job[3], job[4], job[5], job[8], job[9]}
end

local charge, refund = finish_job(k, job_id, owner, to, reason, now, flush_due,
  tonumber(job[3]), tonumber(job[6]), tonumber(job[7]))
return {'ok', to, job[3], job[4], job[5], charge, refund}
