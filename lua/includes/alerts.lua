-- alerts: the account's balance alerts (docs/billing.md), recorded by the script that moves
-- `available`, in the same call, right after the move.
-- Settings and state live in the user hash (written by lua/alert_set.lua):
--   alert_low        the low_balance threshold (absent: off)
--   alert_floor      the cheapest model's price, as last passed in by a caller that knows
--                    the models (reserve, grant, alert_set); a caller that does not (a
--                    worker's finish_job) passes nil and the stored one counts
--   alert_low_sent   '1' once credits.low fired, until available is back at or above it
--   alert_exh_sent   '1' once credits.exhausted fired, until available is back at or above
--                    the floor
--   hook_url, hook_events (comma separated)  the account webhook (PUT /me/webhook)
--   alert_seq        the account's event counter (delivery ids)
-- a = {user = user hash, log = the user's account webhook log (hash delivery id -> JSON
-- record), webhooks = the bucket's due zset}. Without a.log (a caller that only raises
-- available) the state still moves, and no delivery is recorded.
-- A delivery id is 'acct.<ms>-<n>.<user id>': it names its user, so its log
-- (service/state/outbox.py). The log keeps the newest ALERT_LOG_KEEP deliveries.
local ALERT_LOG_KEEP = 50

-- offset + the position (1 or 2) of a.log / a.webhooks when it holds another type, or nil
-- (offset: the keys the caller checked before them).
local function alerts_wrong_type(a, offset)
  if not a.log then return nil end
  for i, spec in ipairs({{a.log, 'hash'}, {a.webhooks, 'zset'}}) do
    local found = redis.call('TYPE', spec[1])
    if type(found) == 'table' then found = found['ok'] end
    if found ~= 'none' and found ~= spec[2] then return offset + i end
  end
  return nil
end

local function alert_record(a, user_id, kind, available, low, now, grant_id)
  if not a.log then return end
  local hook = redis.call('HMGET', a.user, 'hook_url', 'hook_events')
  if not hook[1] or hook[1] == '' or
      not string.find(',' .. (hook[2] or '') .. ',', ',' .. kind .. ',', 1, true) then
    return
  end
  local seq = redis.call('HINCRBY', a.user, 'alert_seq', 1)
  local id = 'acct.' .. now .. '-' .. seq .. '.' .. user_id
  local data = {user_id = user_id, available = available}
  if low then data.low_balance = low else data.low_balance = cjson.null end
  if grant_id then data.grant = grant_id end
  redis.call('HSET', a.log, id, cjson.encode({id = id, owner = user_id, type = kind,
    url = hook[1], data = data, created_at = now, attempts = 0, next_attempt_at = now}))
  redis.call('PERSIST', a.log)  -- an idle log expires (lua/webhook_result.lua); not now
  redis.call('ZADD', a.webhooks, now, id)
  if redis.call('HLEN', a.log) > ALERT_LOG_KEEP then  -- drop the oldest: by its id's ms, n
    local oldest, oldest_at, oldest_n
    for _, field in ipairs(redis.call('HKEYS', a.log)) do
      local at, n = string.match(field, '^acct%.(%d+)%-(%d+)%.')
      at, n = tonumber(at) or 0, tonumber(n) or 0
      if not oldest or at < oldest_at or (at == oldest_at and n < oldest_n) then
        oldest, oldest_at, oldest_n = field, at, n
      end
    end
    redis.call('HDEL', a.log, oldest)
    redis.call('ZREM', a.webhooks, oldest)
  end
end

-- After `available` changed: fires what it fell below, re-arms what it is back above.
-- floor: the cheapest model's price when the caller knows the models, else nil.
local function alerts_after(a, user_id, now, floor)
  local u = redis.call('HMGET', a.user, 'available', 'alert_low', 'alert_low_sent',
    'alert_floor', 'alert_exh_sent')
  local available = tonumber(u[1])
  if not available then return end
  if floor then
    if tostring(floor) ~= u[4] then redis.call('HSET', a.user, 'alert_floor', floor) end
  else
    floor = tonumber(u[4])
  end
  local low = tonumber(u[2])
  if low then
    if available < low and u[3] ~= '1' then
      redis.call('HSET', a.user, 'alert_low_sent', '1')
      alert_record(a, user_id, 'credits.low', available, low, now)
    elseif available >= low and u[3] == '1' then
      redis.call('HDEL', a.user, 'alert_low_sent')
    end
  end
  if floor then
    if available < floor and u[5] ~= '1' then
      redis.call('HSET', a.user, 'alert_exh_sent', '1')
      alert_record(a, user_id, 'credits.exhausted', available, low, now)
    elseif available >= floor and u[5] == '1' then
      redis.call('HDEL', a.user, 'alert_exh_sent')
    end
  end
end

-- credits.expiring (lua/grants_warn.lua): an event of a grant, not of a balance move.
local function alert_event(a, user_id, kind, now, grant_id)
  local u = redis.call('HMGET', a.user, 'available', 'alert_low')
  alert_record(a, user_id, kind, tonumber(u[1]) or 0, tonumber(u[2]), now, grant_id)
end
