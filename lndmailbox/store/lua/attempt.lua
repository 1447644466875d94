-- ARGV: peer, binary id. Returns the new attempts count, or -1 if the message is gone.

local pos, r = find(ARGV[2])
if not pos then return -1 end
local attempts = math.min(rec_attempts(r) + 1, 255)
redis.call('LSET', Q, pos, rec_with(r, attempts, rec_redeliveries(r)))
return attempts
