-- flush_read: what a flusher visit writes to SQL from one bucket, in one reply (read
-- only): the head of its ledger list, its refused ledger entries due again, and the hashes
-- of the finished jobs it claimed. One script a bucket instead of four commands a job: the
-- client's cost per reply, not Redis's, bounded the flusher (bench.end_to_end).
--
-- KEYS[1] ledger        bucket ledger       KEYS[2] ledger_retry  bucket ledger retries
-- KEYS[3..] jobs        4 keys per job: its hash, items hash, meta string, webhook log hash
--
-- ARGV[1] ledger_limit  entries read from each of KEYS[1] and KEYS[2] (>= 1)
-- ARGV[2] now ms        retries due by then
--
-- Returns {ledger_head, retries_due, jobs}: jobs holds 4 values per job: the hash and the
-- items as flat field/value lists, the meta ('' when none), the webhook log as a flat list
local limit, now = tonumber(ARGV[1]), tonumber(ARGV[2])
if not limit or not now or limit < 1 or limit % 1 ~= 0 or (#KEYS - 2) % 4 ~= 0 then
  return redis.error_reply('flush_read: bad arguments')
end
local jobs = {}
for i = 3, #KEYS, 4 do
  jobs[#jobs + 1] = redis.call('HGETALL', KEYS[i])
  jobs[#jobs + 1] = redis.call('HGETALL', KEYS[i + 1])
  jobs[#jobs + 1] = redis.call('GET', KEYS[i + 2]) or ''
  jobs[#jobs + 1] = redis.call('HGETALL', KEYS[i + 3])
end
return {
  redis.call('LRANGE', KEYS[1], 0, limit - 1),
  redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, limit),
  jobs,
}
