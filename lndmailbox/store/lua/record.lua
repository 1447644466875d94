-- KEYS: counters, events. ARGV: events maxlen, at, number of counters, (name, by)...,
-- (kind, peer, id, size, reason)... One command, so a batch lands whole or not at all.

local C, E = KEYS[1], KEYS[2]
local maxlen, at, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
local i = 4
for _ = 1, n do
  redis.call('HINCRBY', C, ARGV[i], ARGV[i + 1])
  i = i + 2
end
while i <= #ARGV do
  append_event(E, maxlen, ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], at)
  i = i + 5
end
return 1
