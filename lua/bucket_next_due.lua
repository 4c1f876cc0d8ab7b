-- bucket_next_due: when the flusher must next visit this bucket, read only (the due index's
-- source of truth: service/state/due.py writes the answer into the index).
--
-- KEYS[1] holds   bucket holds   KEYS[2] leases  bucket leases   KEYS[3] queued  bucket queued
-- KEYS[4] flush   bucket flush   KEYS[5] ledger  bucket ledger   KEYS[6] ledger_retry
-- KEYS[7] grant_expiry  bucket grant expiry (includes/grants.lua: the next grant to expire)
-- KEYS[8] grant_warn    bucket grant warning (lua/grants_warn.lua: the next credits.expiring)
--
-- ARGV[1] requeue_after_ms (a queued job is due that long after its score)  ARGV[2] now ms
--
-- Returns the earliest due ms, ARGV[2] when ledger entries wait, or -1: nothing to do
local requeue_after, now = tonumber(ARGV[1]), tonumber(ARGV[2])
if not requeue_after or not now then return redis.error_reply('bucket_next_due: bad arguments') end
if redis.call('LLEN', KEYS[5]) > 0 then return now end

local best = -1
local function first(key, add)
  local head = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if head[2] then
    local due = tonumber(head[2]) + add
    if best < 0 or due < best then best = due end
  end
end
first(KEYS[1], 0)
first(KEYS[2], 0)
first(KEYS[3], requeue_after)
first(KEYS[4], 0)
first(KEYS[6], 0)
first(KEYS[7], 0)
first(KEYS[8], 0)
return best
