-- cancel: end any live job as 'canceled' (the user's cancel, or an unused hold that
-- expired): charge what already succeeded, refund the rest, free the slot, schedule the
-- flush. Later callbacks for the job are refused by item_result.
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
-- ARGV[1] job_id  ARGV[2] owner  ARGV[3] reason  ARGV[4] now ms  ARGV[5] flush_due ms
-- ARGV[6] from_states allowed, comma separated, or '' for any live state
--
-- Returns {code, state, done, failed, total, charged, refunded} with code one of
--   'ok' | 'already' (already canceled) | 'invalid_transition' (done/failed, or not an
--   allowed from state) | 'not_found' | 'bad_argument'
--   | 'wrong_type' (a key holds another type: nothing written)
-- @include finish_job
local job_id, owner, reason = ARGV[1], ARGV[2], ARGV[3]
local now, flush_due = tonumber(ARGV[4]), tonumber(ARGV[5])
if not now or not flush_due then return {'bad_argument', 'time'} end
local allowed = nil
if ARGV[6] ~= '' then
  allowed = {}
  for state in string.gmatch(ARGV[6], '[^,]+') do allowed[state] = true end
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
if state == 'canceled' then return {'already', state, job[3], job[4], job[5], job[8], job[9]} end
if TERMINAL[state] or (allowed and not allowed[state]) then
  return {'invalid_transition', state, job[3], job[4], job[5], job[8], job[9]}
end

local charge, refund = finish_job(k, job_id, owner, 'canceled', reason, now, flush_due,
  tonumber(job[3]), tonumber(job[6]), tonumber(job[7]))
return {'ok', 'canceled', job[3], job[4], job[5], charge, refund}
