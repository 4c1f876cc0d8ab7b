-- rate_limit: takes one request of a class (write | read) from the user's limit, and from
-- the limit of the API key that made it when that key has a lower limit of its own. GCRA
-- (the generic cell rate algorithm): one key per limit holds its theoretical arrival time
-- (TAT), so a user costs one small string per class, whatever the rate. A full window's
-- quota may come at once (burst = limit), then one request every window/limit ms.
--
-- KEYS[1] user      user hash       tg:{b}:user:<uid>  (read only: its plan)
-- KEYS[2] rate      user rate       tg:{b}:user:<uid>:rate:<class>  (string: TAT ms)
-- KEYS[3] key_rate  optional: API key rate  tg:{b}:user:<uid>:key:<key id>:rate:<class>
--
-- ARGV[1] window_ms  ARGV[2] key_limit: the API key's own limit (used only with KEYS[3])
-- ARGV[3..] plan_limits: plan name, limit pairs; the first pair's limit also applies to a
--   user with no hash yet or a plan not listed
--
-- Returns {allowed, limit, remaining, wait_ms} where allowed is 1 or 0, and wait_ms, when
--   allowed, the time until the whole quota is back, and when refused the time until one
--   request is allowed again; or {'bad_argument', what}
--
-- The clock is this Redis node's (TIME), so every API process counts against one clock.
-- Not idempotent, and need not be: a retried call takes one more request from the quota,
-- as the client's own retried request would. The only write is the last command, and the
-- reads before it fail on a key of another type, so an error never leaves a partial write.
local window = tonumber(ARGV[1])
if not window or window <= 0 then return {'bad_argument', 'window'} end
local plan = redis.call('HGET', KEYS[1], 'plan')
local limit = tonumber(ARGV[4])
for i = 3, #ARGV - 1, 2 do
  if ARGV[i] == plan then limit = tonumber(ARGV[i + 1]) end
end
if not limit or limit < 1 then return {'bad_argument', 'limit'} end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + tonumber(time[2]) / 1000

-- One limit's TAT after this request, and how long before `now` that request became
-- allowed (negative: not yet allowed).
local function take(key, quota)
  local interval = window / quota
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  local next_tat = tat + interval
  return {key = key, quota = quota, interval = interval, tat = next_tat,
          slack = now - (next_tat - window)}
end

local limits = {take(KEYS[2], limit)}
if KEYS[3] then
  local key_limit = tonumber(ARGV[2])
  if not key_limit or key_limit < 1 then return {'bad_argument', 'key_limit'} end
  limits[2] = take(KEYS[3], key_limit)
end
-- Refused: the limit that frees last is the one shown. Allowed: the one with the fewest
-- requests left.
local shown = limits[1]
for _, each in ipairs(limits) do
  each.left = math.floor(each.slack / each.interval)
  if each.slack < shown.slack then shown = each end
end
if shown.slack < 0 then return {0, shown.quota, 0, math.ceil(-shown.slack)} end
for _, each in ipairs(limits) do
  if each.left < shown.left then shown = each end
end
for _, each in ipairs(limits) do
  redis.call('SET', each.key, string.format('%.3f', each.tat), 'PX', math.ceil(each.tat - now))
end
return {1, shown.quota, shown.left, math.ceil(shown.tat - now)}
