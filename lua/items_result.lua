-- items_result: a worker's report of a whole batch of items (`event: "items"`), applied in
-- one call. Each entry follows item_result's exactly-once rule (includes/count_items.lua):
-- a callback key in the job's ring is a duplicate, an item with an outcome is a duplicate
-- whatever its key. The entry that completes the job finishes it and settles its credits in
-- this same call, as item_result does.
--
-- KEYS[1] job           job hash        tg:{b}:job:<jid>
-- KEYS[2] items         job items       tg:{b}:job:<jid>:items  (index -> 'ok:<output key>' | 'failed:<error>')
-- KEYS[3] callbacks     job callbacks   tg:{b}:job:<jid>:cb     (list, last 512 callback keys)
-- KEYS[4] callback_set  job callback set tg:{b}:job:<jid>:cbset (the same keys, for O(1) membership)
-- KEYS[5] user          user hash       KEYS[6] active  user active set
-- KEYS[7] holds         bucket holds    KEYS[8] leases  bucket leases   KEYS[9] queued  bucket queued
-- KEYS[10] flush        bucket flush    KEYS[11] ledger  bucket ledger
-- KEYS[12] webhook_log  job webhook log
-- KEYS[13] webhooks     bucket webhooks (the outbox, includes/outbox.lua)
-- KEYS[14] counters     bucket counters tg:{b}:counters (includes/stats.lua)
-- KEYS[15] key_spend    owner's API key spend  tg:{b}:user:<uid>:key-spend (includes/finish_job.lua)
-- KEYS[16] grants       owner's grants  tg:{b}:user:<uid>:grants (includes/grants.lua)
-- KEYS[17] grant_expiry bucket grant expiry  tg:{b}:grant-expiry (includes/grants.lua)
--
-- ARGV[1] job_id  ARGV[2] owner (from the callback token)  ARGV[3] now ms
-- ARGV[4] lease_until: the new lease deadline ms  ARGV[5] flush_due ms
-- ARGV[6] count: n, the number of entries
-- ARGV[7..] entries, 4 per entry, i = 0..n-1: ARGV[7+4i] callback key
--   ARGV[8+4i] item index (0-based)
--   ARGV[9+4i] '1' ok | '0' failed | '2' failed, billable (includes/count_items.lua)
--   ARGV[10+4i] output key or error
--
-- Returns {code, state, done, failed, total, counted, duplicates} with code one of
--   'ok'                  at least one entry counted (state 'done'/'failed' when the job
--                         finished in this call)
--   'duplicate'           every entry was counted before
--   'invalid_transition'  the job is not queued or running and some entry is new
--   'not_found'           no such job for this owner        (just {code})
--   'bad_argument'        {code, what}: an index out of range, a malformed entry or number;
--                         nothing is written
--   'wrong_type'          {code, n}: the n-th key checked holds another type; nothing written
-- @include job_progress
-- @include key_types
-- @include count_items
-- @const MAX_REPORT_ITEMS
local job_id, owner = ARGV[1], ARGV[2]
local now, lease_deadline, flush_due = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local n = tonumber(ARGV[6])
if not now or not lease_deadline or not flush_due then return {'bad_argument', 'time'} end
if not n or n < 1 or n > MAX_REPORT_ITEMS or n % 1 ~= 0 or #ARGV ~= 6 + 4 * n then
  return {'bad_argument', 'items'}
end
local bad = wrong_type({{KEYS[1], 'hash'}, {KEYS[2], 'hash'}, {KEYS[3], 'list'},
  {KEYS[4], 'set'}, {KEYS[5], 'hash'}, {KEYS[6], 'set'}, {KEYS[7], 'zset'}, {KEYS[8], 'zset'},
  {KEYS[9], 'zset'}, {KEYS[10], 'zset'}, {KEYS[11], 'list'}, {KEYS[12], 'hash'},
  {KEYS[13], 'zset'}, {KEYS[14], 'hash'}, {KEYS[15], 'hash'},
  {KEYS[16], 'hash'}, {KEYS[17], 'zset'}})
if bad then return {'wrong_type', bad} end

local job = redis.call('HMGET', KEYS[1], 'state', 'owner', 'done', 'failed', 'total', 'price', 'cost',
  'bill_input_errors', 'billed')
if not job[1] or job[2] ~= owner then return {'not_found'} end
local state = job[1]
local done, failed, total = tonumber(job[3]), tonumber(job[4]), tonumber(job[5])
local ring = {cb = KEYS[3], cbset = KEYS[4], items = KEYS[2]}

-- Read and check every entry before the first write.
local entries, fresh = {}, 0
for i = 0, n - 1 do
  local base = 7 + 4 * i
  local index, flag = tonumber(ARGV[base + 1]), ARGV[base + 2]
  if not index or index < 0 or index >= total or index % 1 ~= 0 then
    return {'bad_argument', 'item_index'}
  end
  local outcome = item_flag(flag)
  if not outcome then return {'bad_argument', 'ok'} end
  entries[i + 1] = {key = ARGV[base], index = index, ok = outcome[1], billable = outcome[2],
    detail = ARGV[base + 3]}
  if not callback_seen(ring, ARGV[base]) then fresh = fresh + 1 end
end
if fresh == 0 then return {'duplicate', state, done, failed, total, 0, n} end
if state ~= 'queued' and state ~= 'running' then
  return {'invalid_transition', state, done, failed, total}
end

local counted, billed = 0, tonumber(job[9]) or 0
local bills = job[8] == '1'
for _, entry in ipairs(entries) do
  -- Seen again here: the same key may come twice in one batch.
  if not callback_seen(ring, entry.key) then
    remember_callback(ring, entry.key)
    if count_item(ring, entry.index, entry.ok, entry.detail) then
      counted = counted + 1
      if entry.ok then done = done + 1 else failed = failed + 1 end
      if entry.billable and bills then billed = billed + 1 end
    end
  end
end
local duplicates = n - counted
if counted == 0 then return {'duplicate', state, done, failed, total, 0, duplicates} end
redis.call('HSET', KEYS[1], 'done', done, 'failed', failed, 'updated_at', now)
if billed ~= (tonumber(job[9]) or 0) then redis.call('HSET', KEYS[1], 'billed', billed) end
stats_items(KEYS[14], KEYS[1], done - tonumber(job[3]), failed - tonumber(job[4]))

local k = {job = KEYS[1], user = KEYS[5], active = KEYS[6], holds = KEYS[7], leases = KEYS[8],
  queued = KEYS[9], flush = KEYS[10], ledger = KEYS[11], hooks = KEYS[12], webhooks = KEYS[13],
  stats = KEYS[14], key_spend = KEYS[15],
  grants = KEYS[16], grant_expiry = KEYS[17]}
local now_state = job_progress(k, job_id, owner, state, done, failed, total, now,
  lease_deadline, flush_due, tonumber(job[6]), tonumber(job[7]))
return {'ok', now_state, done, failed, total, counted, duplicates}
