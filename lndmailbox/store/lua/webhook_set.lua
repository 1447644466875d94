-- KEYS: the client's webhooks (hash), the node's webhook clients (sorted set).
-- ARGV: client (peer hex), app_name, value (JSON {"url", "at"}), url, max webhooks, now ms.
-- Sets app_name's webhook, or replaces it, and the client's last seen, in one step:
-- * the same URL already set: only the last seen is written (no change);
-- * a new app_name while the client has max webhooks: nothing is written (too many);
--   replacing an existing one never counts as too many, nor does a value that no longer
--   parses (it is replaced).
-- Returns {webhooks the client has now, 0 written | 1 no change | 2 too many}.

local hooks, clients = KEYS[1], KEYS[2]
local peer, app, value, url = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local most, now = tonumber(ARGV[5]), ARGV[6]
for key, kind in pairs({[hooks] = 'hash', [clients] = 'zset'}) do
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= kind then
    return redis.error_reply('WRONGTYPE ' .. key .. ' holds a ' .. t .. ', not a ' .. kind)
  end
end
local n = redis.call('HLEN', hooks)
local old = redis.call('HGET', hooks, app)
if old then
  local ok, held = pcall(cjson.decode, old)
  if ok and type(held) == 'table' and held['url'] == url then
    redis.call('ZADD', clients, now, peer)
    return {n, 1}
  end
elseif n >= most then
  return {n, 2}
end
redis.call('HSET', hooks, app, value)
redis.call('ZADD', clients, now, peer)
return {redis.call('HLEN', hooks), 0}
