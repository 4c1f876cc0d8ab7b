-- renew_lease: a worker still working on a running job pushes its lease deadline out.
--
-- KEYS[1] job  job hash  KEYS[2] leases  bucket leases
--
-- ARGV[1] job_id  ARGV[2] owner  ARGV[3] lease_until: the new lease deadline ms
--
-- Returns {code, state} with code 'ok' | 'invalid_transition' (not running) | 'not_found'
--   | 'bad_argument'
local deadline = tonumber(ARGV[3])
if not deadline then return {'bad_argument', 'deadline'} end
local job = redis.call('HMGET', KEYS[1], 'state', 'owner')
if not job[1] or job[2] ~= ARGV[2] then return {'not_found'} end
if job[1] ~= 'running' then return {'invalid_transition', job[1]} end
redis.call('ZADD', KEYS[2], deadline, ARGV[1])
return {'ok', 'running'}
