-- reserve: create a job, hold its credits and take a concurrency slot, in one step.
-- Idempotent by job id (a retried call answers 'already') and by Idempotency-Key.
--
-- KEYS[1] user hash            tg:{b}:user:<uid>
-- KEYS[2] user active set      tg:{b}:user:<uid>:active
-- KEYS[3] user jobs index      tg:{b}:user:<uid>:jobs   (zset job id -> created_at ms)
-- KEYS[4] job hash             tg:{b}:job:<jid>
-- KEYS[5] job meta             tg:{b}:job:<jid>:meta    (item descriptions, JSON)
-- KEYS[6] bucket holds         tg:{b}:holds             (zset job id -> hold deadline ms)
-- KEYS[7] idempotency record   tg:{b}:user:<uid>:idem:<key>  (ignored unless ARGV[8] = '1')
-- KEYS[8] bucket ledger        tg:{b}:ledger            (gets the 'hold:<jid>' entry, -cost)
--
-- ARGV[1] job id      ARGV[2] owner user id   ARGV[3] total items   ARGV[4] price per item
-- ARGV[5] now ms      ARGV[6] hold deadline ms            ARGV[7] meta JSON
-- ARGV[8] '1' when an Idempotency-Key is given   ARGV[9] request body hash
-- ARGV[10] idempotency record TTL ms             ARGV[11] rule id or ''
-- ARGV[12] model name (its price is ARGV[4]: both are fixed on the job from here on)
-- ARGV[13] webhook URL or ''   ARGV[14] webhook events, comma separated (includes/outbox.lua)
-- ARGV[15] params JSON or '' (copied from the rule or the body: the job keeps them as they were)
-- ARGV[16] '1' when the model bills input errors (bill_input_errors): items failed as
--   billable are then charged (includes/count_items.lua); absent or '' otherwise
--
-- Returns:
--   {'ok', job_id}                       reserved now
--   {'already', job_id}                  this job id, or this Idempotency-Key with the same body, exists
--   {'idempotency_key_reused', job_id}   the key was used with another body
--   {'not_found'}                        the user is not provisioned
--   {'insufficient_credits', available, cost}
--   {'concurrency_limit', active, limit}
--   {'bad_argument', name}
--   {'wrong_type', n}                    the n-th key checked holds another type: nothing written
--
-- ARGV[17] the job's own result TTL in seconds, or '' (TOLLGATE_RESULT_TTL)
-- ARGV[18] the job it retries (POST /jobs/{id}/retry), or ''
-- ARGV[19] 'uploaded' to create the job uploaded (a retry: its inputs are there), or ''
local job_id, owner = ARGV[1], ARGV[2]
local total, price = tonumber(ARGV[3]), tonumber(ARGV[4])
local now, deadline = tonumber(ARGV[5]), tonumber(ARGV[6])
local use_idem, body_hash = ARGV[8] == '1', ARGV[9]
local idem_ttl = tonumber(ARGV[10])
-- Whole numbers only: a fractional total or price would store a fractional cost, and
-- HINCRBY refuses it with an error reply instead of a code.
if not total or total < 1 or total % 1 ~= 0 then return {'bad_argument', 'total'} end
if not price or price < 0 or price % 1 ~= 0 then return {'bad_argument', 'price'} end
if not now or not deadline then return {'bad_argument', 'time'} end
if use_idem and not idem_ttl then return {'bad_argument', 'idempotency_ttl'} end
local result_ttl = ARGV[17] or ''
if result_ttl ~= '' and not tonumber(result_ttl) then return {'bad_argument', 'result_ttl'} end
local initial = ARGV[19] or ''
if initial ~= '' and initial ~= 'uploaded' then return {'bad_argument', 'state'} end
-- @include key_types
local bad = wrong_type({{KEYS[1], 'hash'}, {KEYS[2], 'set'}, {KEYS[3], 'zset'},
  {KEYS[4], 'hash'}, {KEYS[6], 'zset'}, {KEYS[7], 'hash'}, {KEYS[8], 'list'}})
if bad then return {'wrong_type', bad} end

if use_idem then
  local previous = redis.call('HMGET', KEYS[7], 'job_id', 'body_hash')
  if previous[1] then
    if previous[2] == body_hash then return {'already', previous[1]} end
    return {'idempotency_key_reused', previous[1]}
  end
end
if redis.call('EXISTS', KEYS[4]) == 1 then return {'already', job_id} end

local user = redis.call('HMGET', KEYS[1], 'available', 'max_active')
if not user[1] then return {'not_found'} end
local available, max_active = tonumber(user[1]), tonumber(user[2])
local cost = total * price
if available < cost then return {'insufficient_credits', available, cost} end
local active = redis.call('SCARD', KEYS[2])
if active >= max_active then return {'concurrency_limit', active, max_active} end

-- 0 - cost, not -cost: a free job's -0 reaches Redis as '-0', which HINCRBY refuses.
redis.call('HINCRBY', KEYS[1], 'available', 0 - cost)
redis.call('HINCRBY', KEYS[1], 'reserved', cost)
redis.call('SADD', KEYS[2], job_id)
redis.call('ZADD', KEYS[3], now, job_id)
redis.call('HSET', KEYS[4], 'id', job_id, 'owner', owner, 'state', 'created',
  'total', total, 'done', 0, 'failed', 0, 'price', price, 'cost', cost,
  'charged', 0, 'refunded', 0, 'created_at', now, 'updated_at', now, 'rule_id', ARGV[11],
  'model', ARGV[12] or '', 'webhook_url', ARGV[13] or '', 'webhook_events', ARGV[14] or '',
  'params', ARGV[15] or '')
if ARGV[16] == '1' then redis.call('HSET', KEYS[4], 'bill_input_errors', '1') end
redis.call('SET', KEYS[5], ARGV[7])
redis.call('ZADD', KEYS[6], deadline, job_id)
if cost > 0 then
  -- Two-phase ledger: the hold leaves the balance now; finish_job gives all of it back
  -- ('release') and takes what was used ('charge').
  redis.call('RPUSH', KEYS[8], cjson.encode({id = 'hold:' .. job_id, user_id = owner,
    kind = 'hold', amount = 0 - cost, job_id = job_id, at = now}))
end
if use_idem then
  redis.call('HSET', KEYS[7], 'job_id', job_id, 'body_hash', body_hash)
  redis.call('PEXPIRE', KEYS[7], idem_ttl)
end
if result_ttl ~= '' then redis.call('HSET', KEYS[4], 'result_ttl', result_ttl) end
if (ARGV[18] or '') ~= '' then redis.call('HSET', KEYS[4], 'retry_of', ARGV[18]) end
if initial ~= '' then redis.call('HSET', KEYS[4], 'state', initial) end
return {'ok', job_id}
