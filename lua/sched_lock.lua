-- sched_lock: a queue's dispatch lock (service/flusher/dispatcher.py), taken, renewed or
-- given back in one round trip. One dispatcher fills a queue at a time; a dispatcher that
-- stops gives its locks back, so another takes the queue over at once, not when the lock
-- would have expired.
--
-- KEYS[1] lock  the queue's lock  tg:sched:{q:<queue>}:lock (the holder's token)
--
-- ARGV[1] token  the dispatcher's  ARGV[2] ms  the lock's life (0: give it back)
--
-- Returns 1 when the lock is the caller's for ms more (taken, or renewed) or was given back,
-- 0 when another holds it; an error reply 'sched_lock: ...' on bad arguments or a key of
-- another type.
local token, ms = ARGV[1], tonumber(ARGV[2])
if not ms or ms < 0 or token == '' then return redis.error_reply('sched_lock: bad arguments') end
local kind = redis.call('TYPE', KEYS[1]).ok
if kind ~= 'none' and kind ~= 'string' then
  return redis.error_reply('sched_lock: wrong_type 1')
end
local holder = redis.call('GET', KEYS[1])
if ms == 0 then
  if holder == token then redis.call('DEL', KEYS[1]) end
  return 1
end
if holder and holder ~= token then return 0 end
redis.call('SET', KEYS[1], token, 'PX', ms)
return 1
