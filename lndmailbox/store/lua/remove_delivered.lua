-- ARGV: peer, events trim, at (seconds), then (binary id, size) of each message lnd
-- accepted. Counts and publishes each as delivered, also one evicted, expired or purged
-- while it was on its way (the peer got it all the same), and removes those still queued.
-- Returns how many were still queued.

if not node_keys_ok() then return redis.error_reply(NODE_KEYS_DAMAGED) end
repair()
local n, db = 0, 0
for i = 4, #ARGV, 2 do
  local pos, r = find(ARGV[i])
  if pos then
    take(pos, r)
    n = n + 1
    db = db - rec_size(r)
  end
  tell('delivered', hex(ARGV[i]), ARGV[i + 1], '', ARGV[2], ARGV[3])
end
if n > 0 then account(-n, db) end
return n
