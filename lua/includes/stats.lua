-- stats: the bucket's business counters (tg:{b}:counters, a hash field -> count), bumped by
-- the script that makes the change, so every API process's /metrics reads the same totals
-- (service/state/metrics.py sums the buckets at scrape time). Fields:
--   jobs:<model>:<status>     jobs that reached a terminal status
--   items:<model>:<outcome>   ok | failed (as reported) | skipped (never reported: the job
--                             ended first)
--   credits:<kind>            charged | refunded | granted | revoked | expire (grants)
--   holds_expired, leases_expired, flush_failures (flush_retry_end.lua)
-- A caller that passes no counters key (nil) counts nothing.
local DEFAULT_MODEL = 'thumbnail'

local function stats_model(job_key)
  local model = redis.call('HGET', job_key, 'model')
  if not model or model == '' then return DEFAULT_MODEL end
  return model
end

local function stats_add(stats, field, n)
  if stats and n and n ~= 0 then redis.call('HINCRBY', stats, field, n) end
end

-- Items a worker reported now (ok and failed counts).
local function stats_items(stats, job_key, ok, failed)
  if not stats or (ok == 0 and failed == 0) then return end
  local model = stats_model(job_key)
  stats_add(stats, 'items:' .. model .. ':ok', ok)
  stats_add(stats, 'items:' .. model .. ':failed', failed)
end

-- A job reached `status` (its done/failed/total already written to the job hash).
local function stats_finished(stats, job_key, status, reason, charge, refund)
  if not stats then return end
  local job = redis.call('HMGET', job_key, 'done', 'failed', 'total')
  local model = stats_model(job_key)
  stats_add(stats, 'jobs:' .. model .. ':' .. status, 1)
  local skipped = (tonumber(job[3]) or 0) - (tonumber(job[1]) or 0) - (tonumber(job[2]) or 0)
  if skipped > 0 then stats_add(stats, 'items:' .. model .. ':skipped', skipped) end
  stats_add(stats, 'credits:charged', charge)
  stats_add(stats, 'credits:refunded', refund)
  if reason == 'hold_expired' then stats_add(stats, 'holds_expired', 1) end
  if reason == 'lease_expired' then stats_add(stats, 'leases_expired', 1) end
end
