-- due_take: the buckets of one due-index shard whose visit is due, each pushed to the
-- pass's placeholder score (far beyond any real due time), so a second flusher skips them
-- and any write to such a bucket meanwhile (ZADD LT) brings its score back below it.
--
-- KEYS[1] due_index  a due-index shard  tg:due:{dN}  (zset: bucket -> ms its visit is due)
--
-- ARGV[1] now ms  ARGV[2] limit (>= 1)  ARGV[3] placeholder score of this pass
--
-- Returns the buckets taken (strings)
local now, limit, placeholder = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
if not now or not limit or limit < 1 or limit % 1 ~= 0 or not tonumber(placeholder) then
  return redis.error_reply('due_take: bad arguments')
end
local buckets = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, limit)
for _, bucket in ipairs(buckets) do redis.call('ZADD', KEYS[1], placeholder, bucket) end
return buckets
