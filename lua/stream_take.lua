-- stream_take: takes (or renews) one of a user's open-stream slots for a stream (an SSE
-- stream), as a lease: a process that dies holding one leaks it only until the lease ends.
--
-- KEYS[1] streams  user streams  tg:{b}:user:<uid>:streams  (zset: stream id -> lease deadline ms)
--
-- ARGV[1] stream_id  ARGV[2] lease_ms  ARGV[3] most streams open at once
--
-- Returns {code, open} with code 'ok' (taken or renewed) | 'too_many_streams' (nothing
--   written) | 'bad_argument'; open: the slots held after the call
--
-- Idempotent by stream id: a retried call renews the slot it took. The clock is this Redis
-- node's (TIME), as every API process shares the set.
local lease, most = tonumber(ARGV[2]), tonumber(ARGV[3])
if not lease or lease <= 0 or not most then return {'bad_argument', 0} end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local open = redis.call('ZCARD', KEYS[1])
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  if open >= most then return {'too_many_streams', open} end
  open = open + 1
end
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
redis.call('PEXPIRE', KEYS[1], lease)
return {'ok', open}
