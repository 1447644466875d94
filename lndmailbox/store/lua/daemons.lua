-- KEYS: daemons (hash). ARGV: owner token, its heartbeat (a JSON object; empty: the daemon
-- stops), stale ms, TTL ms.
-- Every daemon of the node, leader or standby, writes its own heartbeat here, with `at`
-- set from Redis's clock (Unix seconds), so that no host's clock decides which heartbeat
-- is stale. A daemon that stops removes its own; every write also removes the heartbeats
-- older than `stale` (a daemon that died) and what does not parse: the hash holds the
-- daemons running now. Returns how many heartbeats it holds.

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
if ARGV[2] ~= '' then
  local beat = cjson.decode(ARGV[2])
  beat['at'] = math.floor(now * 1000) / 1000
  redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(beat))
else
  redis.call('HDEL', KEYS[1], ARGV[1])
end
local oldest = now - tonumber(ARGV[3]) / 1000
local all = redis.call('HGETALL', KEYS[1])
local left = 0
for i = 1, #all, 2 do
  local ok, beat = pcall(cjson.decode, all[i + 1])
  if ok and type(beat) == 'table' and type(beat['at']) == 'number' and beat['at'] >= oldest then
    left = left + 1
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
if left > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return left
