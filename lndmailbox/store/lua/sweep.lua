-- ARGV: peer, now ms. Removes every expired message of the peer, queued or unconfirmed,
-- and sets its exact earliest expiry in the index. Returns the expired records.

repair()
local now = tonumber(ARGV[2])
local out, at = {}, {}
local earliest = nil
local db = 0
-- Whether record r (at pos in held order) has expired; books it if so.
local function expired(r, pos)
  local e = rec_expires(r)
  if e <= now then
    out[#out + 1] = r
    at[#at + 1] = pos
    db = db - rec_size(r)
    return true
  end
  if earliest == nil or e < earliest then earliest = e end
  return false
end
local sent = redis.call('LRANGE', UQ, 0, -1)
local gone = {}
for i, e in ipairs(sent) do
  if expired(ent_rec(e), i - 1) then gone[#gone + 1] = e end
end
if #gone == #sent then
  if #sent > 0 then redis.call('DEL', UQ) end
else
  for _, e in ipairs(gone) do redis.call('LREM', UQ, 1, e) end
end
local all = redis.call('LRANGE', Q, 0, -1)
local before = #out
for i, r in ipairs(all) do expired(r, #sent + i - 1) end
local n = #out - before
if n == #all then
  if #all > 0 then redis.call('DEL', Q) end
elseif n > 0 then
  local leading = 0
  while leading < #all and rec_expires(all[leading + 1]) <= now do leading = leading + 1 end
  if leading == n then
    redis.call('LTRIM', Q, leading, -1)
  else
    for i = before + 1, #out do redis.call('LREM', Q, 1, out[i]) end
  end
end
for _, r in ipairs(out) do redis.call('HDEL', D, rec_digest(r)) end
untell(at) -- the flood mark (peer.lua); a peer left with nothing clears it in account()
account(-#out, db)
if earliest then redis.call('ZADD', M, earliest, PEER) end
return out
