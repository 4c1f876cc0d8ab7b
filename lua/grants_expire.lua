-- grants_expire: a user's grants past their expires_at lose what is left in them (the
-- flusher's bucket pass, for the members of the bucket's grant expiry index that are due).
-- Each grant with credits left gets its 'expire:<grant id>' ledger entry; credits a live
-- job still holds from it expire when they come back (includes/finish_job.lua). Running it
-- again changes nothing.
--
-- KEYS[1] user          user hash            tg:{b}:user:<uid>
-- KEYS[2] grants        user grants          tg:{b}:user:<uid>:grants (includes/grants.lua)
-- KEYS[3] grant_expiry  bucket grant expiry  tg:{b}:grant-expiry
-- KEYS[4] ledger        bucket ledger        tg:{b}:ledger
-- KEYS[5] counters      bucket counters      tg:{b}:counters (includes/stats.lua: credits:expire)
-- KEYS[6] alert_log     optional: account log tg:{b}:user:<uid>:account-hooks (includes/alerts.lua)
-- KEYS[7] webhooks      optional: bucket webhooks tg:{b}:webhooks (zset delivery id -> next attempt ms)
--
-- ARGV[1] user_id  ARGV[2] now ms
--
-- Returns {code, expired} with code 'ok' (expired: the credits that left the balance)
--   | 'bad_argument' | 'wrong_type' ({code, n}: the n-th key checked holds another type)
-- @include stats
-- @include key_types
-- @include grants
local owner, now = ARGV[1], tonumber(ARGV[2])
if not now then return {'bad_argument', 'now'} end
local bad = wrong_type({{KEYS[1], 'hash'}, {KEYS[2], 'hash'}, {KEYS[3], 'zset'},
  {KEYS[4], 'list'}, {KEYS[5], 'hash'}})
-- @include alerts
local alert_keys = {user = KEYS[1], log = KEYS[6], webhooks = KEYS[7]}
bad = bad or alerts_wrong_type(alert_keys, 5)
if bad then return {'wrong_type', bad} end
local expired = 0
for _, g in ipairs(grants_read(KEYS[2])) do
  if grant_expired(g, now) then
    if g.r > 0 then
      grant_expire_entry(KEYS[4], 'expire:' .. g.id, owner, g.r, now)
      expired = expired + g.r
      g.x, g.r = g.x + g.r, 0
    end
    grant_write(KEYS[2], KEYS[3], owner, g)
    redis.call('ZREM', KEYS[3], owner .. ':' .. g.id)
  end
end
-- Members whose grant is gone (used up, or the user was lost): nothing left to expire.
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)) do
  local user_id, grant_id = string.match(member, '^(.*):([^:]+)$')
  if user_id == owner and redis.call('HEXISTS', KEYS[2], grant_id) == 0 then
    redis.call('ZREM', KEYS[3], member)
  end
end
if expired > 0 and redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'available', 0 - expired)
  alerts_after(alert_keys, owner, now, nil)  -- the floor stored by the last hold or grant
  redis.call('HINCRBY', KEYS[1], 'granted', 0 - expired)
  stats_add(KEYS[5], 'credits:expire', expired)
end
return {'ok', expired}
