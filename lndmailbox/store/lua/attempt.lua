-- ARGV: peer, binary id. Returns the new attempts count, or -1 if the message is gone.

local pos, r = find(ARGV[2])
if not pos then return -1 end
local hi, lo = string.byte(r, 18, 19)
local attempts = math.min(hi * 256 + lo + 1, 65535)
local updated = string.sub(r, 1, 17) .. string.char(math.floor(attempts / 256), attempts % 256)
  .. string.sub(r, 20)
redis.call('LSET', Q, pos, updated)
return attempts
