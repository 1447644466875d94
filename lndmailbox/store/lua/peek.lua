-- ARGV: peer, now ms, limit, binary ids to pass over... Walks from the head: records passed
-- over stay as they are (the deliverer has them in hand), expired records met on the way are
-- removed, the first `limit` other ones are returned (and stay queued).
-- Returns {number of ready records, ready records..., expired records...}

repair()
local now, limit = tonumber(ARGV[2]), tonumber(ARGV[3])
local skip = {}
for i = 4, #ARGV do skip[ARGV[i]] = true end
local ready, expired, at = {}, {}, {}
local pos, db = 0, 0
local held = redis.call('LLEN', UQ) -- the unconfirmed messages come first in held order
while #ready < limit do
  local chunk = redis.call('LRANGE', Q, pos, pos + limit + 15)
  if #chunk == 0 then break end
  for j, r in ipairs(chunk) do
    if skip[rec_id(r)] then
      -- in hand
    elseif rec_expires(r) <= now then
      expired[#expired + 1] = r
      at[#at + 1] = held + pos + j - 1
      db = db - rec_size(r)
    else
      ready[#ready + 1] = r
      if #ready >= limit then break end
    end
  end
  pos = pos + #chunk
end
-- where each sat in held order before any went, for the flood mark (peer.lua, untell)
untell(at)
for _, r in ipairs(expired) do
  redis.call('LREM', Q, 1, r)
  redis.call('HDEL', D, rec_digest(r))
end
if #expired > 0 then account(-#expired, db) end
local out = {#ready}
for _, r in ipairs(ready) do out[#out + 1] = r end
for _, r in ipairs(expired) do out[#out + 1] = r end
return out
