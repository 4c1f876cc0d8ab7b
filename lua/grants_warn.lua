-- grants_warn: credits.expiring for a user's grants whose warning is due (24 h before their
-- expires_at: the member's score in the bucket's grant warning index, written by grant.lua),
-- recorded once per grant that still has credits left (the member leaves the index; a grant
-- already gone, used up or expired records nothing). The flusher's bucket pass calls it.
--
-- KEYS[1] user        user hash            tg:{b}:user:<uid>
-- KEYS[2] grants      user grants          tg:{b}:user:<uid>:grants (includes/grants.lua)
-- KEYS[3] grant_warn  bucket grant warning tg:{b}:grant-warn  (zset '<uid>:<grant id>' -> ms)
-- KEYS[4] alert_log   account log          tg:{b}:user:<uid>:account-hooks (includes/alerts.lua)
-- KEYS[5] webhooks    bucket webhooks      tg:{b}:webhooks (zset delivery id -> next attempt ms)
--
-- ARGV[1] user_id  ARGV[2] now ms
--
-- Returns {code, warned} with code 'ok' | 'bad_argument'
--   | 'wrong_type' ({code, n}: the n-th key checked holds another type; nothing written)
-- @include key_types
-- @include grants
-- @include alerts
local owner, now = ARGV[1], tonumber(ARGV[2])
if not now then return {'bad_argument', 'now'} end
-- The user hash takes the alert's sequence and the grants are read between the ZREMs:
-- checked with the rest, or a wrong type would fail the script after its first write.
local bad = wrong_type({{KEYS[3], 'zset'}, {KEYS[1], 'hash'}, {KEYS[2], 'hash'}})
  or alerts_wrong_type({user = KEYS[1], log = KEYS[4], webhooks = KEYS[5]}, 3)
if bad then return {'wrong_type', bad} end
local warned = 0
local prefix = owner .. ':'
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)) do
  if string.sub(member, 1, #prefix) == prefix then
    local grant_id = string.sub(member, #prefix + 1)
    local raw = redis.call('HGET', KEYS[2], grant_id)
    redis.call('ZREM', KEYS[3], member)
    if raw then
      local g = grant_decode(grant_id, raw)
      if g.r > 0 and not grant_expired(g, now) then
        alert_event({user = KEYS[1], log = KEYS[4], webhooks = KEYS[5]}, owner,
          'credits.expiring', now, grant_id)
        warned = warned + 1
      end
    end
  end
end
return {'ok', warned}
