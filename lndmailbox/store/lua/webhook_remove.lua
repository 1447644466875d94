-- KEYS: the client's webhooks (hash), the node's webhook clients (sorted set).
-- ARGV: client (peer hex), app_name, now ms ('' when the operator removes it: the client
-- was not seen).
-- Removes app_name's webhook. A client left with none leaves the clients; one that still
-- has some (or asked to remove a name it does not have) is seen now, unless now is ''; a
-- peer that is no client is not made one. Returns 1 if the webhook was there, else 0.

local hooks, clients, peer = KEYS[1], KEYS[2], ARGV[1]
local removed = redis.call('HDEL', hooks, ARGV[2])
if redis.call('HLEN', hooks) == 0 then
  redis.call('ZREM', clients, peer)
elseif ARGV[3] ~= '' then
  redis.call('ZADD', clients, 'XX', ARGV[3], peer)
end
return removed
