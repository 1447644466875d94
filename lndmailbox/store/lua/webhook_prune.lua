-- KEYS: the client's webhooks (hash), the node's webhook clients (sorted set).
-- ARGV: client (peer hex), seen before (ms).
-- Removes the client and its webhooks if it was still last seen before then: one seen
-- since the caller read the index stays. Returns 1 if it was removed, else 0.

local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if score and tonumber(score) < tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 1
end
return 0
