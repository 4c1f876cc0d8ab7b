-- job_progress: where a worker's counted report leaves its job (shared by item_result and
-- items_result). While some item has no outcome yet the job runs: a queued job starts, its
-- lease is pushed out to `lease_deadline`, and the change is recorded ('started', then
-- 'progress', includes/outbox.lua). The report that gives the last item its outcome
-- finishes the job, 'done' (or 'failed' when no item succeeded), and settles its credits.
-- Callers have validated and counted the report: this only writes.
-- k: finish_job's keys (includes/finish_job.lua), hooks and webhooks and stats included.
-- Returns the job's state after the report: 'running', 'done' or 'failed'.
-- @include finish_job
local function job_progress(k, job_id, owner, state, done, failed, total, now, lease_deadline,
                            flush_due, price, cost)
  if done + failed < total then
    if state == 'queued' then
      redis.call('HSET', k.job, 'state', 'running', 'started_at', now)
      redis.call('ZREM', k.queued, job_id)
      job_changed(k, job_id, 'started', now)
    end
    redis.call('ZADD', k.leases, lease_deadline, job_id)
    job_changed(k, job_id, 'progress', now)
    return 'running'
  end
  local final = 'done'
  if done == 0 then final = 'failed' end
  finish_job(k, job_id, owner, final, 'completed', now, flush_due, done, price, cost)
  return final
end
