-- count_items: the exactly-once rule for worker item reports, shared by item_result (one
-- report) and items_result (a batch of them).
--
-- Two checks, as the design names them:
-- 1. The callback ring: the job's last 512 callback keys. They are kept twice, in step: a
--    list in arrival order (tg:{b}:job:<jid>:cb, LPUSH, the oldest popped past 512) and a set
--    of the same keys (tg:{b}:job:<jid>:cbset). "Seen this key?" is one SISMEMBER, O(1),
--    where an LPOS over the list cost O(512): 1.55x the whole callback by item 500 of a
--    1000-item job. A key leaves the set when it falls off the list. A key is pushed only
--    when it is not in the set, so the list never holds a key twice. (A list written before
--    the set existed has no set entries: its keys are then caught by check 2.)
-- 2. The items hash (tg:{b}:job:<jid>:items, HEXISTS): an item counts once even when it is
--    reported again under another key.
-- k = {cb = ring list, cbset = ring set, items = items hash}
--
-- Paying for work done: an item failed as billable (flag '2', `Output.failed(...,
-- billable=True)`: the input's fault, found after the work was done) counts as failed, and
-- also in the job's 'billed' field when the job's model bills input errors (its
-- 'bill_input_errors' field, set by reserve). finish_job charges (done + billed) * price.
local CALLBACK_KEYS_KEPT = 512

local function callback_seen(k, cb_key)
  return redis.call('SISMEMBER', k.cbset, cb_key) == 1
end

local function remember_callback(k, cb_key)
  redis.call('SADD', k.cbset, cb_key)
  if redis.call('LPUSH', k.cb, cb_key) > CALLBACK_KEYS_KEPT then
    redis.call('SREM', k.cbset, redis.call('RPOP', k.cb))
  end
end

-- Records an item's outcome unless it has one; true when it was counted now.
local function count_item(k, index, ok, detail)
  if redis.call('HEXISTS', k.items, index) == 1 then return false end
  if ok then
    redis.call('HSET', k.items, index, 'ok:' .. detail)
  else
    redis.call('HSET', k.items, index, 'failed:' .. detail)
  end
  return true
end

-- A report's outcome flag: '1' ok, '0' failed, '2' failed and billable; nil when malformed.
local ITEM_FLAGS = {['1'] = {true, false}, ['0'] = {false, false}, ['2'] = {false, true}}
local function item_flag(flag)
  return ITEM_FLAGS[flag]
end
