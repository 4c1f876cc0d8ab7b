-- transition: move a live job one step along created -> uploaded -> queued -> running.
-- Refuses any other move; repeating a move that already happened answers 'already'.
--
-- KEYS[1] job      job hash       tg:{b}:job:<jid>
-- KEYS[2] holds    bucket holds   tg:{b}:holds    (created/uploaded jobs, by hold deadline)
-- KEYS[3] leases   bucket leases  tg:{b}:leases   (running jobs, by lease deadline)
-- KEYS[4] queued   bucket queued  tg:{b}:queued   (queued jobs, by time queued)
-- KEYS[5] webhook_log  job webhook log
-- KEYS[6] webhooks     bucket webhooks (the outbox, includes/outbox.lua)
--
-- ARGV[1] job_id  ARGV[2] owner ('' = any; workers are checked by token)
-- ARGV[3] from_state expected  ARGV[4] to_state  ARGV[5] now ms
-- ARGV[6] lease_until: the lease deadline ms
--
-- Returns {code, state, done, failed, total} with code one of
--   'ok'                  moved
--   'already'             the job is already in the target state
--   'invalid_transition'  the job is in another state
--   'not_found'           no such job (or another owner's)
--   'bad_argument'        the move is not one of the three above
--   'wrong_type'          {code, n}: the n-th key checked holds another type; nothing written
-- @include outbox
-- @include key_types
local ALLOWED = {created = 'uploaded', uploaded = 'queued', queued = 'running'}
local job_id, owner, from, to = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now, lease_deadline = tonumber(ARGV[5]), tonumber(ARGV[6])
if ALLOWED[from] ~= to then return {'bad_argument', from .. '->' .. to} end
if not now or not lease_deadline then return {'bad_argument', 'time'} end
local bad = wrong_type({{KEYS[1], 'hash'}, {KEYS[2], 'zset'}, {KEYS[3], 'zset'},
  {KEYS[4], 'zset'}, {KEYS[5], 'hash'}, {KEYS[6], 'zset'}})
if bad then return {'wrong_type', bad} end

local job = redis.call('HMGET', KEYS[1], 'state', 'owner', 'done', 'failed', 'total')
if not job[1] or (owner ~= '' and job[2] ~= owner) then return {'not_found'} end
local state = job[1]
if state == to then return {'already', state, job[3], job[4], job[5]} end
if state ~= from then return {'invalid_transition', state, job[3], job[4], job[5]} end

redis.call('HSET', KEYS[1], 'state', to, 'updated_at', now)
if to == 'queued' then
  redis.call('ZREM', KEYS[2], job_id)
  redis.call('ZADD', KEYS[4], now, job_id)
  redis.call('HSET', KEYS[1], 'queued_at', now)
elseif to == 'running' then
  redis.call('ZREM', KEYS[4], job_id)
  redis.call('ZADD', KEYS[3], lease_deadline, job_id)
  redis.call('HSET', KEYS[1], 'started_at', now)
end
local o = {job = KEYS[1], hooks = KEYS[5], webhooks = KEYS[6]}
job_changed(o, job_id, to == 'running' and 'started' or nil, now)
return {'ok', to, job[3], job[4], job[5]}
