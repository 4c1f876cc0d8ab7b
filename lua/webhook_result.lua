-- webhook_result: the outcome of one delivery attempt, into the job's webhook log.
-- Applies only if the record still shows ARGV[3] attempts, so a retried call (or a second
-- sweeper that delivered the same claim) counts the attempt once.
--
-- KEYS[1] webhook_log       job webhook log   tg:{b}:job:<jid>:webhooks  (delivery id -> JSON record)
-- KEYS[2] webhooks          bucket webhooks   tg:{b}:webhooks            (zset delivery id -> next attempt ms)
-- KEYS[3] webhook_outcomes  bucket outcomes   tg:{b}:webhook-outcomes    (hash outcome -> attempts)
--
-- ARGV[1] delivery_id  ARGV[2] outcome: 'delivered' | 'failed' (retry at ARGV[6]) |
--   'gave_up' (failed, and no retry is left)
-- ARGV[3] attempts_seen: the attempts the record showed before this one
-- ARGV[4] status: the HTTP status or '' (no answer)
-- ARGV[5] now ms  ARGV[6] next_attempt ms (for 'failed')  ARGV[7] body sent ('' = keep)
-- ARGV[8] log_ttl_ms once the delivery has ended
--
-- Returns {code} with code 'ok' | 'already' (this attempt was recorded) | 'not_found'
--   (no such delivery: its id leaves the due zset) | 'bad_argument'
--   | 'wrong_type' ({code, n}: the n-th key checked holds another type; nothing written)
-- @include key_types
local id, outcome = ARGV[1], ARGV[2]
local seen, now, next_at = tonumber(ARGV[3]), tonumber(ARGV[5]), tonumber(ARGV[6])
local log_ttl = tonumber(ARGV[8])
if outcome ~= 'delivered' and outcome ~= 'failed' and outcome ~= 'gave_up' then
  return {'bad_argument', 'outcome'}
end
if not seen or not now or not log_ttl or (outcome == 'failed' and not next_at) then
  return {'bad_argument', 'numbers'}
end
local bad = wrong_type({{KEYS[1], 'hash'}, {KEYS[2], 'zset'}, {KEYS[3], 'hash'}})
if bad then return {'wrong_type', bad} end
local raw = redis.call('HGET', KEYS[1], id)
if not raw then
  redis.call('ZREM', KEYS[2], id)
  return {'not_found'}
end
local record = cjson.decode(raw)
if record.attempts ~= seen or record.delivered_at or record.gave_up_at then return {'already'} end

record.attempts = seen + 1
record.last_attempt_at = now
record.last_status = tonumber(ARGV[4])  -- nil (omitted) when nothing answered
if ARGV[7] ~= '' then record.body = ARGV[7] end
if outcome == 'failed' then
  record.next_attempt_at = next_at
  redis.call('ZADD', KEYS[2], next_at, id)
else
  record.next_attempt_at = nil
  if outcome == 'delivered' then record.delivered_at = now else record.gave_up_at = now end
  redis.call('ZREM', KEYS[2], id)
  redis.call('PEXPIRE', KEYS[1], log_ttl)  -- a new event of the job PERSISTs it again
end
redis.call('HSET', KEYS[1], id, cjson.encode(record))
redis.call('HINCRBY', KEYS[3], outcome, 1)
return {'ok'}
