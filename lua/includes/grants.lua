-- grants: a user's credit grants (issue 20), kept in the user's bucket.
--   grants       hash  tg:{b}:user:<uid>:grants  grant id -> JSON {k: kind ('paid' |
--                'promotional'), a: amount, r: remaining (counted in available), h: held by
--                live jobs, c: charged, x: expired, m: removed by a negative grant,
--                e: expires_at ms (0: never), t: created ms}; always a = r + h + c + x + m
--   grant_expiry zset  tg:{b}:grant-expiry  '<uid>:<grant id>' -> expires_at ms (the
--                flusher's bucket pass expires them, lua/grants_expire.lua; bucket_next_due
--                reads its head)
-- A grant leaves the hash once nothing is left in it nor held from it (r = 0 and h = 0).
-- Credits of `available` outside every grant (a balance from before grants, what a rebuild
-- could not place) are the base: they never expire and are drawn last.
-- A job records what it drew in its hash, field 'grants': '<grant id>:<n>,...' in draw
-- order (the base part is the cost less their sum).
local GRANT_KIND_RANK = {promotional = 0, paid = 1}

local function grant_expired(g, now) return g.e > 0 and g.e <= now end

-- Burn-down order: the earliest expiry first, no expiry last; promotional before paid on
-- a tie; then the oldest.
local function grant_before(a, b)
  local ea, eb = a.e > 0 and a.e or math.huge, b.e > 0 and b.e or math.huge
  if ea ~= eb then return ea < eb end
  local ka, kb = GRANT_KIND_RANK[a.k] or 1, GRANT_KIND_RANK[b.k] or 1
  if ka ~= kb then return ka < kb end
  if a.t ~= b.t then return a.t < b.t end
  return a.id < b.id
end

local function grant_decode(id, raw)
  local g = cjson.decode(raw)
  g.id = id
  return g
end

-- Every grant of the user, in burn-down order.
local function grants_read(key)
  local flat = redis.call('HGETALL', key)
  local list = {}
  for i = 1, #flat, 2 do list[#list + 1] = grant_decode(flat[i], flat[i + 1]) end
  table.sort(list, grant_before)
  return list
end

local function grant_write(key, expiry, owner, g)
  if g.r <= 0 and g.h <= 0 then
    redis.call('HDEL', key, g.id)
    if g.e > 0 then redis.call('ZREM', expiry, owner .. ':' .. g.id) end
    return
  end
  redis.call('HSET', key, g.id, cjson.encode({k = g.k, a = g.a, r = g.r, h = g.h, c = g.c,
    x = g.x, m = g.m, e = g.e, t = g.t}))
end

-- What the user's grants past their expiry still hold (the sweep has not taken it yet):
-- part of `available`, but no hold may draw it.
local function grants_overdue(list, now)
  local overdue = 0
  for _, g in ipairs(list) do
    if grant_expired(g, now) then overdue = overdue + g.r end
  end
  return overdue
end

-- A hold of `cost`: drawn from the open grants in burn-down order (the base after them).
-- Returns the job's 'grants' field.
local function grants_draw(list, key, expiry, owner, cost, now)
  local parts, need = {}, cost
  for _, g in ipairs(list) do
    if need <= 0 then break end
    if g.r > 0 and not grant_expired(g, now) then
      local n = math.min(g.r, need)
      g.r, g.h, need = g.r - n, g.h + n, need - n
      grant_write(key, expiry, owner, g)
      parts[#parts + 1] = g.id .. ':' .. n
    end
  end
  return table.concat(parts, ',')
end

-- A removal (a negative admin grant) of `amount` credits: taken from the grants in
-- burn-down order (the base after them). The caller checked available >= amount.
local function grants_remove(key, expiry, owner, amount)
  local need = amount
  for _, g in ipairs(grants_read(key)) do
    if need <= 0 then break end
    if g.r > 0 then
      local n = math.min(g.r, need)
      g.r, g.m, need = g.r - n, g.m + n, need - n
      grant_write(key, expiry, owner, g)
    end
  end
end

local function grant_expire_entry(ledger, id, owner, amount, now)
  redis.call('RPUSH', ledger, cjson.encode({id = id, user_id = owner, kind = 'expire',
    amount = 0 - amount, reason = 'grant expired', at = now}))
end

-- A job ends: its draws go back to their grants, less `charge` (taken from the draws in
-- their order, then from the base). Credits going back to a grant that expired meanwhile
-- expire at once: an 'expire:<grant id>:<job id>' ledger entry each. Returns how many
-- expired so (the caller takes them from available and granted).
local function grants_release(k, job_id, owner, charge, now)
  local drawn = redis.call('HGET', k.job, 'grants')
  if not drawn or drawn == '' or not k.grants then return 0 end
  local left, lost = charge, 0
  for id, n in string.gmatch(drawn, '([^,:]+):(%d+)') do
    n = tonumber(n)
    local used = math.min(n, left)
    left = left - used
    local raw = redis.call('HGET', k.grants, id)
    if raw then
      local g = grant_decode(id, raw)
      local back = n - used
      g.h, g.c = g.h - n, g.c + used
      if back > 0 and grant_expired(g, now) then
        g.x, lost = g.x + back, lost + back
        grant_expire_entry(k.ledger, 'expire:' .. id .. ':' .. job_id, owner, back, now)
      else
        g.r = g.r + back
      end
      grant_write(k.grants, k.grant_expiry, owner, g)
    end
  end
  return lost
end
