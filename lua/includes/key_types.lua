-- key_types: before a script's first write, check that every key it will write holds the
-- type it writes, or nothing. Redis has no rollback: a WRONGTYPE half-way would keep the
-- writes before it (a hold taken, a slot used, for good).
-- expected = {{key, 'hash'}, {key, 'zset'}, ...}; returns the position in `expected` of
-- the first key of another type, or nil.
local function wrong_type(expected)
  for i, spec in ipairs(expected) do
    local found = redis.call('TYPE', spec[1])
    if type(found) == 'table' then found = found['ok'] end
    if found ~= 'none' and found ~= spec[2] then return i end
  end
  return nil
end
