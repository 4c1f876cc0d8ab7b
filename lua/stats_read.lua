-- stats_read: the figures of a group of buckets for a metrics scrape, in one reply
-- (read-only). The counters come back raw, field by field, for the client to sum: Lua
-- numbers are doubles, which lose whole counts past 2^53 and print 1e14 as
-- '1.0100000000003e+14', which no integer parser takes. A scrape on a standalone Redis sends one call per group of up to 256
-- buckets in use (service/state/stats.py); on a Cluster (where one script cannot span
-- slots) it reads the same keys by plain commands instead.
--
-- KEYS[1..] buckets, 6 keys per bucket, for bucket i = 0..n-1:
--   KEYS[6i+1] counters tg:{b}:counters (includes/stats.lua)  KEYS[6i+2] webhook outcomes
--   KEYS[6i+3] holds    KEYS[6i+4] queued    KEYS[6i+5] leases    KEYS[6i+6] flush
--
-- Returns {counters, outcomes, held, queued, running, first_due}: counters as a flat field,
--   value list (a field once per bucket that has it), outcomes the same, first_due the
--   earliest flush due ms as a string ('' when none); or an error for a bad key count.
local MAX_BUCKETS = 256
local n = #KEYS / 6
if n % 1 ~= 0 or n > MAX_BUCKETS then return redis.error_reply('stats_read: bad key count') end

local function append_hash(key, into)
  local flat = redis.call('HGETALL', key)
  for i = 1, #flat do into[#into + 1] = flat[i] end
end

local counters, outcomes = {}, {}
local held, queued, running, due = 0, 0, 0, nil
for i = 0, n - 1 do
  local k = 6 * i
  append_hash(KEYS[k + 1], counters)
  append_hash(KEYS[k + 2], outcomes)
  held = held + redis.call('ZCARD', KEYS[k + 3])
  queued = queued + redis.call('ZCARD', KEYS[k + 4])
  running = running + redis.call('ZCARD', KEYS[k + 5])
  local first = redis.call('ZRANGE', KEYS[k + 6], 0, 0, 'WITHSCORES')
  if first[2] then
    local score = tonumber(first[2])
    if not due or score < due then due = score end
  end
end
local due_text = ''
if due then due_text = string.format('%d', due) end
return {counters, outcomes, held, queued, running, due_text}
