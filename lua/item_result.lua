-- item_result: a worker's report for one item. Counts each item exactly once: the job's
-- ring of the last 512 callback keys drops repeated callbacks, and the per-item hash
-- drops a second report of an item under a new key (includes/count_items.lua, shared with
-- items_result, which takes a batch's reports in one call). The report of the last item finishes
-- the job and settles its credits in this same script.
--
-- KEYS[1] job           job hash        tg:{b}:job:<jid>
-- KEYS[2] items         job items       tg:{b}:job:<jid>:items  (index -> 'ok:<output key>' | 'failed:<error>')
-- KEYS[3] callbacks     job callbacks   tg:{b}:job:<jid>:cb     (list, last 512 callback keys)
-- KEYS[4] user          user hash       KEYS[5] active  user active set
-- KEYS[6] holds         bucket holds    KEYS[7] leases  bucket leases   KEYS[8] queued  bucket queued
-- KEYS[9] flush         bucket flush    KEYS[10] ledger  bucket ledger
-- KEYS[11] webhook_log  job webhook log
-- KEYS[12] webhooks     bucket webhooks (the outbox, includes/outbox.lua)
-- KEYS[13] callback_set job callback set tg:{b}:job:<jid>:cbset (the ring's keys, for O(1) membership)
-- KEYS[14] counters     bucket counters tg:{b}:counters (includes/stats.lua)
-- KEYS[15] key_spend    owner's API key spend  tg:{b}:user:<uid>:key-spend (includes/finish_job.lua)
-- KEYS[16] grants       owner's grants  tg:{b}:user:<uid>:grants (includes/grants.lua)
-- KEYS[17] grant_expiry bucket grant expiry  tg:{b}:grant-expiry (includes/grants.lua)
--
-- ARGV[1] job_id  ARGV[2] owner (from the callback token)  ARGV[3] callback_key
-- ARGV[4] index of the item (0-based)  ARGV[5] outcome: '1' ok | '0' failed | '2' failed,
--   billable (includes/count_items.lua)  ARGV[6] detail: the output key or the error
-- ARGV[7] now ms  ARGV[8] lease_until: the new lease deadline ms  ARGV[9] flush_due ms
--
-- Returns {code, state, done, failed, total} with code one of
--   'ok'                  counted (state 'done'/'failed' when this was the last item)
--   'duplicate'           this callback key or this item was already counted
--   'invalid_transition'  the job is not queued or running (e.g. canceled)
--   'not_found'           no such job for this owner
--   'bad_argument'        index out of range or malformed numbers
--   'wrong_type'          {code, n}: the n-th key checked holds another type; nothing written
-- @include job_progress
-- @include key_types
-- @include count_items
local job_id, owner, cb_key = ARGV[1], ARGV[2], ARGV[3]
local index, outcome, detail = tonumber(ARGV[4]), item_flag(ARGV[5]), ARGV[6]
local now, lease_deadline, flush_due = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
if not now or not lease_deadline or not flush_due then return {'bad_argument', 'time'} end
if not outcome then return {'bad_argument', 'ok'} end
local ok, billable = outcome[1], outcome[2]
local bad = wrong_type({{KEYS[1], 'hash'}, {KEYS[2], 'hash'}, {KEYS[3], 'list'},
  {KEYS[4], 'hash'}, {KEYS[5], 'set'}, {KEYS[6], 'zset'}, {KEYS[7], 'zset'}, {KEYS[8], 'zset'},
  {KEYS[9], 'zset'}, {KEYS[10], 'list'}, {KEYS[11], 'hash'}, {KEYS[12], 'zset'},
  {KEYS[13], 'set'}, {KEYS[14], 'hash'}, {KEYS[15], 'hash'},
  {KEYS[16], 'hash'}, {KEYS[17], 'zset'}})
if bad then return {'wrong_type', bad} end

local job = redis.call('HMGET', KEYS[1], 'state', 'owner', 'done', 'failed', 'total', 'price', 'cost',
  'bill_input_errors', 'billed')
if not job[1] or job[2] ~= owner then return {'not_found'} end
local state = job[1]
local done, failed, total = tonumber(job[3]), tonumber(job[4]), tonumber(job[5])
local ring = {cb = KEYS[3], cbset = KEYS[13], items = KEYS[2]}
if callback_seen(ring, cb_key) then
  return {'duplicate', state, done, failed, total}
end
if state ~= 'queued' and state ~= 'running' then
  return {'invalid_transition', state, done, failed, total}
end
if not index or index < 0 or index >= total or index % 1 ~= 0 then
  return {'bad_argument', 'item_index'}
end

remember_callback(ring, cb_key)
if not count_item(ring, index, ok, detail) then
  return {'duplicate', state, done, failed, total}
end

if ok then
  done = done + 1
  redis.call('HSET', KEYS[1], 'done', done, 'updated_at', now)
else
  failed = failed + 1
  redis.call('HSET', KEYS[1], 'failed', failed, 'updated_at', now)
  if billable and job[8] == '1' then
    redis.call('HSET', KEYS[1], 'billed', (tonumber(job[9]) or 0) + 1)
  end
end
stats_items(KEYS[14], KEYS[1], ok and 1 or 0, ok and 0 or 1)

local k = {job = KEYS[1], user = KEYS[4], active = KEYS[5], holds = KEYS[6], leases = KEYS[7],
  queued = KEYS[8], flush = KEYS[9], ledger = KEYS[10], hooks = KEYS[11], webhooks = KEYS[12],
  stats = KEYS[14], key_spend = KEYS[15],
  grants = KEYS[16], grant_expiry = KEYS[17]}
local now_state = job_progress(k, job_id, owner, state, done, failed, total, now,
  lease_deadline, flush_due, tonumber(job[6]), tonumber(job[7]))
return {'ok', now_state, done, failed, total}
