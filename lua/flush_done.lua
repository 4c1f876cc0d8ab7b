-- flush_done: after the flusher wrote a finished job to SQL, delete its Redis records.
--
-- KEYS[1] job    job hash      KEYS[2] items  job items  KEYS[3] callbacks  job callbacks
-- KEYS[4] meta   job meta      KEYS[5] flush  bucket flush
-- KEYS[6] jobs   owner's jobs index  KEYS[7] callback_set  job callback set
-- KEYS[8] webhook_log  job webhook log (delivery id -> JSON record)
--
-- ARGV[1] job_id
-- ARGV[2] flushed_deliveries: the log's delivery ids, comma separated, when every one of them
--   had ended (delivered or given up) as the flusher read the log it wrote to SQL; '' if not.
--   The log is deleted too when it holds exactly those (an ended record never changes; a
--   delivery pending then, or a redelivery since, keeps it: it expires on its own).
--
-- Returns {code} with code 'ok' (deleted) | 'already' (gone) | 'invalid_transition'
-- (the job is still live: nothing deleted)
--   | 'wrong_type' ({code, n}: the n-th key checked holds another type; nothing written)
-- @include key_types
local bad = wrong_type({{KEYS[1], 'hash'}, {KEYS[5], 'zset'}, {KEYS[6], 'zset'},
  {KEYS[8], 'hash'}})
if bad then return {'wrong_type', bad} end
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  redis.call('ZREM', KEYS[5], ARGV[1])
  return {'already'}
end
if state ~= 'done' and state ~= 'failed' and state ~= 'canceled' then
  return {'invalid_transition', state}
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[7])
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('ZREM', KEYS[6], ARGV[1])
if ARGV[2] ~= '' then
  local ids = {}
  for id in string.gmatch(ARGV[2], '[^,]+') do ids[#ids + 1] = id end
  local same = redis.call('HLEN', KEYS[8]) == #ids
  for _, id in ipairs(ids) do
    if not same then break end
    same = redis.call('HEXISTS', KEYS[8], id) == 1
  end
  if same then redis.call('DEL', KEYS[8]) end
end
return {'ok'}
