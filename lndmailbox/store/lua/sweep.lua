-- ARGV: peer, now ms. Removes every expired message of the peer, sets its exact earliest
-- expiry in the index. Returns the expired records.

repair()
local now = tonumber(ARGV[2])
local all = redis.call('LRANGE', Q, 0, -1)
local out = {}
local earliest = nil
local db = 0
local at = {}
for i, r in ipairs(all) do
  local e = rec_expires(r)
  if e <= now then
    out[#out + 1] = r
    at[#at + 1] = i - 1
    db = db - rec_size(r)
  elseif earliest == nil or e < earliest then
    earliest = e
  end
end
if #out == #all then
  if #all > 0 then redis.call('DEL', Q) end
elseif #out > 0 then
  local leading = 0
  while leading < #all and rec_expires(all[leading + 1]) <= now do leading = leading + 1 end
  if leading == #out then
    redis.call('LTRIM', Q, leading, -1)
  else
    for _, r in ipairs(out) do redis.call('LREM', Q, 1, r) end
  end
end
for _, r in ipairs(out) do redis.call('HDEL', D, rec_digest(r)) end
untell(at) -- the flood mark (peer.lua); an emptied queue clears it in account()
account(-#out, db)
if earliest then redis.call('ZADD', M, earliest, PEER) end
return out
