-- finish_job: settle a job that is reaching a terminal state (shared by settle, cancel,
-- item_result). Charges (done + billed) * price (billed: the failed items charged for
-- the model's bill_input_errors, includes/count_items.lua), refunds the rest of the hold,
-- frees the concurrency slot, drops the job from every work index and schedules its flush.
-- Callers must have validated everything before calling: this only writes.
-- k = {job, user, active, holds, leases, queued, flush, ledger, hooks?, webhooks?, stats?}
-- (stats: the bucket's counters, includes/stats.lua)
-- (key_spend: the owner's API key spend hash, reserve.lua: the refund goes back to the
-- period counter of the key that made the job, if that period is still the key's)
-- (grants, grant_expiry: the owner's grants and the bucket's expiry index,
-- includes/grants.lua: what the job drew goes back to its grants, less the charge)
-- (hooks, webhooks: the outbox keys of includes/outbox.lua; the 'completed' event)
-- @include outbox
-- @include stats
-- @include key_types
-- @include grants
-- @include alerts
-- Callers check this before their first write: the position of the first key of `k` that
-- holds another type than finish_job writes, or nil.
local function finish_job_wrong_type(k)
  local expected = {{k.job, 'hash'}, {k.user, 'hash'}, {k.active, 'set'}, {k.holds, 'zset'},
    {k.leases, 'zset'}, {k.queued, 'zset'}, {k.flush, 'zset'}, {k.ledger, 'list'}}
  if k.hooks then
    expected[#expected + 1] = {k.hooks, 'hash'}
    expected[#expected + 1] = {k.webhooks, 'zset'}
  end
  if k.stats then expected[#expected + 1] = {k.stats, 'hash'} end
  if k.key_spend then expected[#expected + 1] = {k.key_spend, 'hash'} end
  if k.grants then
    expected[#expected + 1] = {k.grants, 'hash'}
    expected[#expected + 1] = {k.grant_expiry, 'zset'}
  end
  return wrong_type(expected)
end
local function finish_job(k, job_id, owner, to_state, reason, now, flush_due, done, price, cost)
  local charge = (done + (tonumber(redis.call('HGET', k.job, 'billed')) or 0)) * price
  if charge > cost then charge = cost end
  local refund = cost - charge
  if k.key_spend and refund > 0 then
    local made_by = redis.call('HMGET', k.job, 'key_id', 'key_period')
    if made_by[1] and made_by[1] ~= '' and
        redis.call('HGET', k.key_spend, made_by[1] .. ':p') == made_by[2] then
      redis.call('HINCRBY', k.key_spend, made_by[1] .. ':s', 0 - refund)
    end
  end
  -- Credits going back to a grant that expired while the job held them expire at once.
  local lost = grants_release(k, job_id, owner, charge, now)
  -- 0 - cost, not -cost: a free job's -0 reaches Redis as '-0', which HINCRBY refuses.
  redis.call('HINCRBY', k.user, 'reserved', 0 - cost)
  redis.call('HINCRBY', k.user, 'spent', charge)
  redis.call('HINCRBY', k.user, 'available', refund - lost)
  -- refund - lost >= 0: available only rises here, so this re-arms and records nothing.
  alerts_after({user = k.user}, owner, now, nil)
  if lost > 0 then
    redis.call('HINCRBY', k.user, 'granted', 0 - lost)
    stats_add(k.stats, 'credits:expire', lost)
  end
  redis.call('HSET', k.job, 'state', to_state, 'charged', charge, 'refunded', refund,
    'finished_at', now, 'updated_at', now, 'reason', reason)
  redis.call('SREM', k.active, job_id)
  redis.call('ZREM', k.holds, job_id)
  redis.call('ZREM', k.leases, job_id)
  redis.call('ZREM', k.queued, job_id)
  redis.call('ZADD', k.flush, flush_due, job_id)
  job_changed(k, job_id, 'completed', now)
  stats_finished(k.stats, k.job, to_state, reason, charge, refund)
  -- Two-phase ledger: the whole hold comes back, then the used part is charged, so the
  -- sum of a user's entries is the balance and the sum of the charges is what was spent.
  if cost > 0 then
    redis.call('RPUSH', k.ledger, cjson.encode({id = 'release:' .. job_id, user_id = owner,
      kind = 'release', amount = cost, job_id = job_id, at = now}))
  end
  if charge > 0 then
    redis.call('RPUSH', k.ledger, cjson.encode({id = 'charge:' .. job_id, user_id = owner,
      kind = 'charge', amount = 0 - charge, job_id = job_id, at = now}))
  end
  return charge, refund
end

local TERMINAL = {done = true, failed = true, canceled = true}
