-- outbox: what clients hear of a change, written by the same script that makes the change,
-- so a crash can never keep the change and lose its notice.
-- job_changed bumps the job's change counter 'seq' (SSE streams poll it) and, when the
-- job's webhook asks for `kind` ('started' | 'progress' | 'completed'; nil for a change no
-- webhook event names), records a delivery: a JSON record in the job's webhook log and its
-- id in the bucket's due zset, which the sweeper delivers from.
-- o = {job = job hash, hooks = job webhook log hash, webhooks = bucket due zset}; without
-- o.hooks (a caller that passes no outbox keys) only the counter moves.
-- 'progress' is coalesced: while the job's next progress delivery is not yet due, a change
-- only updates it, and a new one is due at least PROGRESS_EVERY_MS after the last.
local PROGRESS_EVERY_MS = 1000
local function job_changed(o, job_id, kind, now)
  local seq = redis.call('HINCRBY', o.job, 'seq', 1)
  if not kind or not o.hooks then return end
  local job = redis.call('HMGET', o.job, 'webhook_url', 'webhook_events', 'state', 'done',
    'failed', 'webhook_progress', 'webhook_progress_due', 'owner')
  local url, events = job[1], job[2]
  if not url or url == '' or not string.find(',' .. (events or '') .. ',', ',' .. kind .. ',', 1, true) then
    return
  end
  local snapshot = {status = job[3], done = tonumber(job[4]), failed = tonumber(job[5]), at = now}
  local id, due = job_id .. '.' .. kind, now
  if kind == 'progress' then
    local pending_due = tonumber(job[7])
    if pending_due and now < pending_due then
      local pending = redis.call('HGET', o.hooks, job[6])
      if pending then  -- not sent yet: it carries this change too
        local record = cjson.decode(pending)
        record.snapshot = snapshot
        redis.call('HSET', o.hooks, job[6], cjson.encode(record))
        return
      end
    end
    id = job_id .. '.progress.' .. seq
    if pending_due and pending_due + PROGRESS_EVERY_MS > now then due = pending_due + PROGRESS_EVERY_MS end
    redis.call('HSET', o.job, 'webhook_progress', id, 'webhook_progress_due', due)
  end
  redis.call('HSET', o.hooks, id, cjson.encode({id = id, job_id = job_id, owner = job[8], type = 'job.' .. kind,
    url = url, snapshot = snapshot, created_at = now, attempts = 0, next_attempt_at = due}))
  redis.call('PERSIST', o.hooks)  -- a finished log expires; this one has work again
  redis.call('ZADD', o.webhooks, due, id)
end
