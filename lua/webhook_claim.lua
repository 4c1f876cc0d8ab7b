-- webhook_claim: one bucket's due webhook deliveries, at most ARGV[2]. Each id returned is
-- pushed ARGV[3] ms into the future, so a second sweeper skips it and a sweeper that dies
-- before recording the attempt's outcome finds it again then (at least once).
--
-- KEYS[1] webhooks  bucket webhooks  tg:{b}:webhooks  (zset delivery id -> next attempt ms)
--
-- ARGV[1] now ms  ARGV[2] limit  ARGV[3] claim_ms: claim for that long
--
-- Returns the list of claimed delivery ids ('<job id>.<kind>[.<n>]')
local now, limit, claim_for = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
-- A limit below 1 would be no bound at all: ZRANGEBYSCORE ... LIMIT 0 -1 returns everything.
if not now or not limit or not claim_for or limit < 1 or limit % 1 ~= 0 then
  return redis.error_reply('webhook_claim: bad arguments')
end
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, limit)
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], now + claim_for, id) end
return ids
