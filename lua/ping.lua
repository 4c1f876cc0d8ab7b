-- ping: the cheapest script that still proves the scripting engine answers; used by
-- /ready and as the baseline of the benchmarks.
--
-- KEYS[1] key  any key; no ARGV
--
-- Returns the key's value, or false
return redis.call('GET', KEYS[1])
