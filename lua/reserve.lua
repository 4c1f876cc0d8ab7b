-- reserve: create a job, hold its credits and take a concurrency slot, in one step.
-- Idempotent by job id (a retried call answers 'already') and by Idempotency-Key.
--
-- KEYS[1] user         user hash            tg:{b}:user:<uid>
-- KEYS[2] active       user active set      tg:{b}:user:<uid>:active
-- KEYS[3] jobs         user jobs index      tg:{b}:user:<uid>:jobs   (zset job id -> created_at ms)
-- KEYS[4] job          job hash             tg:{b}:job:<jid>
-- KEYS[5] meta         job meta             tg:{b}:job:<jid>:meta    (item descriptions, JSON)
-- KEYS[6] holds        bucket holds         tg:{b}:holds             (zset job id -> hold deadline ms)
-- KEYS[7] idempotency  idempotency record   tg:{b}:user:<uid>:idem:<key>  (ignored unless
--                      opts.idempotent)
-- KEYS[8] ledger       bucket ledger        tg:{b}:ledger            (gets the 'hold:<jid>' entry, -cost)
-- KEYS[9] grants       user grants          tg:{b}:user:<uid>:grants  (includes/grants.lua: the
--                      hold draws from them, recorded in the job's 'grants' field)
-- KEYS[10] grant_expiry bucket grant expiry tg:{b}:grant-expiry (includes/grants.lua)
-- KEYS[11] key_spend   optional: key spend  tg:{b}:user:<uid>:key-spend  (hash: '<key id>:p' the
--                      key's current period, '<key id>:s' credits held and charged through
--                      it in that period); given with opts.key_id (or with the next keys)
-- KEYS[12] alert_log   optional: account log tg:{b}:user:<uid>:account-hooks (includes/alerts.lua)
-- KEYS[13] webhooks    optional: bucket webhooks  tg:{b}:webhooks  (zset delivery id -> next attempt ms)
--
-- ARGV[1] job_id      ARGV[2] owner (user id)   ARGV[3] total items   ARGV[4] price per item
-- ARGV[5] now ms      ARGV[6] hold_until: the hold deadline ms   ARGV[7] meta_json
-- ARGV[8] opts, the optional arguments as one JSON object (includes/opts.lua), each left
--   out when not given:
--     idempotent          true when an Idempotency-Key is given (KEYS[7] is its record)
--     body_hash           the request body hash stored with it
--     idempotency_ttl_ms  the idempotency record's TTL (required with idempotent)
--     rule_id, model      the rule and the model (its price is ARGV[4]: both are fixed on
--                         the job from here on)
--     webhook_url, webhook_events (comma separated, includes/outbox.lua)
--     params              params JSON (copied from the rule or the body: the job keeps them)
--     bill_input_errors   true when the model bills input errors: items failed as billable
--                         are then charged (includes/count_items.lua)
--     result_ttl_s        the job's own result TTL in seconds (TOLLGATE_RESULT_TTL)
--     retry_of            the job it retries (POST /jobs/{id}/retry)
--     uploaded            true to create the job uploaded (a retry: its inputs are there)
--     key_id              the API key that makes the job (recorded on it; its spend counted)
--     key_period          the current UTC period of the key's cap, a whole number (days or
--                         months since the epoch); required with key_id
--     key_cap             the key's spend cap in credits a period, if it has one
--     priority            high | normal | low (lua/admit.lua; checked against the plan by
--                         the API); start_deadline  ms by which it must start (the hold
--                         deadline ARGV[6] is then no later)
--     min_price           the cheapest model's price (includes/alerts.lua: credits.exhausted)
--
-- Returns {code, job_id}:
--   {'ok', job_id}                       reserved now
--   {'already', job_id}                  this job id, or this Idempotency-Key with the same body, exists
--   {'idempotency_key_reused', job_id}   the key was used with another body
--   {'not_found'}                        the user is not provisioned
--   {'insufficient_credits', available, cost}  (available: less what grants past their
--                                        expiry still hold, which no hold may draw)
--   {'concurrency_limit', active, limit}
--   {'key_spend_cap_exceeded', spent, cap}  the key's period spend plus this cost would pass
--                                        its cap: nothing written
--   {'bad_argument', name}               nothing written (an opts field: its name)
--   {'wrong_type', n}                    the n-th key checked holds another type: nothing written
-- @include opts
local job_id, owner = ARGV[1], ARGV[2]
local total, price = tonumber(ARGV[3]), tonumber(ARGV[4])
local now, deadline = tonumber(ARGV[5]), tonumber(ARGV[6])
-- Whole numbers only: a fractional total or price would store a fractional cost, and
-- HINCRBY refuses it with an error reply instead of a code.
if not total or total < 1 or total % 1 ~= 0 then return {'bad_argument', 'total'} end
if not price or price < 0 or price % 1 ~= 0 then return {'bad_argument', 'price'} end
if not now or not deadline then return {'bad_argument', 'time'} end
local opts, bad_opt = read_opts(ARGV[8], {
  idempotent = 'boolean', body_hash = 'string', idempotency_ttl_ms = 'whole',
  rule_id = 'string', model = 'string', webhook_url = 'string', webhook_events = 'string',
  params = 'string', bill_input_errors = 'boolean', result_ttl_s = 'whole',
  retry_of = 'string', uploaded = 'boolean', key_id = 'string', key_period = 'whole',
  key_cap = 'whole', priority = 'string', start_deadline = 'whole', min_price = 'whole'})
if not opts then return {'bad_argument', bad_opt} end
local key_id = opts.key_id
if key_id and (not opts.key_period or not KEYS[11]) then return {'bad_argument', 'key_period'} end
local use_idem, body_hash = opts.idempotent == true, opts.body_hash or ''
local idem_ttl = opts.idempotency_ttl_ms
if use_idem and not idem_ttl then return {'bad_argument', 'idempotency_ttl'} end
-- @include key_types
-- @include grants
local bad = wrong_type({{KEYS[1], 'hash'}, {KEYS[2], 'set'}, {KEYS[3], 'zset'},
  {KEYS[4], 'hash'}, {KEYS[6], 'zset'}, {KEYS[7], 'hash'}, {KEYS[8], 'list'},
  {KEYS[9], 'hash'}, {KEYS[10], 'zset'}, key_id and {KEYS[11], 'hash'} or nil})
-- @include alerts
local alert_keys = {user = KEYS[1], log = KEYS[12], webhooks = KEYS[13]}
bad = bad or alerts_wrong_type(alert_keys, key_id and 10 or 9)
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
local grants = grants_read(KEYS[9])
available = available - grants_overdue(grants, now)
if available < cost then return {'insufficient_credits', available, cost} end
local active = redis.call('SCARD', KEYS[2])
if active >= max_active then return {'concurrency_limit', active, max_active} end
-- The key's spend in its period: a stored period older than this call's starts afresh (0);
-- a newer one (another process's clock past midnight) is the one counted in.
local key_period, key_spent = opts.key_period, 0
if key_id then
  local stored = redis.call('HMGET', KEYS[11], key_id .. ':p', key_id .. ':s')
  local stored_period = tonumber(stored[1])
  if stored_period and stored_period >= key_period then
    key_period, key_spent = stored_period, tonumber(stored[2]) or 0
  end
  if opts.key_cap and key_spent + cost > opts.key_cap then
    return {'key_spend_cap_exceeded', key_spent, opts.key_cap}
  end
end

-- 0 - cost, not -cost: a free job's -0 reaches Redis as '-0', which HINCRBY refuses.
redis.call('HINCRBY', KEYS[1], 'available', 0 - cost)
alerts_after(alert_keys, owner, now, opts.min_price)
redis.call('HINCRBY', KEYS[1], 'reserved', cost)
redis.call('SADD', KEYS[2], job_id)
redis.call('ZADD', KEYS[3], now, job_id)
redis.call('HSET', KEYS[4], 'id', job_id, 'owner', owner, 'state', 'created',
  'total', total, 'done', 0, 'failed', 0, 'price', price, 'cost', cost,
  'charged', 0, 'refunded', 0, 'created_at', now, 'updated_at', now,
  'rule_id', opts.rule_id or '', 'model', opts.model or '', 'webhook_url', opts.webhook_url or '',
  'webhook_events', opts.webhook_events or '', 'params', opts.params or '')
if cost > 0 then
  local drawn = grants_draw(grants, KEYS[9], KEYS[10], owner, cost, now)
  if drawn ~= '' then redis.call('HSET', KEYS[4], 'grants', drawn) end
end
if opts.bill_input_errors then redis.call('HSET', KEYS[4], 'bill_input_errors', '1') end
if key_id then
  redis.call('HSET', KEYS[11], key_id .. ':p', key_period, key_id .. ':s', key_spent + cost)
  redis.call('HSET', KEYS[4], 'key_id', key_id, 'key_period', key_period)
end
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
if opts.result_ttl_s then redis.call('HSET', KEYS[4], 'result_ttl', opts.result_ttl_s) end
if (opts.retry_of or '') ~= '' then redis.call('HSET', KEYS[4], 'retry_of', opts.retry_of) end
if opts.uploaded then redis.call('HSET', KEYS[4], 'state', 'uploaded') end
if opts.priority then redis.call('HSET', KEYS[4], 'priority', opts.priority) end
if opts.start_deadline then redis.call('HSET', KEYS[4], 'start_deadline', opts.start_deadline) end
return {'ok', job_id}
