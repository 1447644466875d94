-- KEYS: inbox (hash), decided (sorted set).
-- ARGV: inbox TTL ms, decided TTL ms, n (messages to journal), then n pairs (entry,
-- value), then the entries decided.
-- Every daemon of a node (the leader and its standbys) journals what it reads from lnd
-- here, an entry per message (a digest of path_key and onion), so a message is held once
-- however many daemons read it: the first copy stays (HSETNX, the earliest receipt time).
-- A message decided less than the decided TTL ago (its entry in `decided`) is not
-- journaled again: a standby's late copy of a message the leader decided never comes
-- back. Then each decided entry leaves the inbox and is recorded in `decided`, scored by
-- Redis's own clock (ms, the same for every daemon whatever their hosts' clocks say),
-- and whatever is older than the decided TTL is trimmed: the set holds a few seconds of
-- decisions, never more. Returns the number of messages not journaled as decided.

local inbox, decided = KEYS[1], KEYS[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local keep = tonumber(ARGV[2])
local since = now - keep
local n = tonumber(ARGV[3])
local skipped, wrote = 0, false
for i = 0, n - 1 do
  local entry = ARGV[4 + 2 * i]
  local at = redis.call('ZSCORE', decided, entry)
  if at and tonumber(at) >= since then
    skipped = skipped + 1
  elseif redis.call('HSETNX', inbox, entry, ARGV[5 + 2 * i]) == 1 then
    wrote = true
  end
end
if wrote then
  redis.call('PEXPIRE', inbox, ARGV[1])
end
local first = 4 + 2 * n
if #ARGV >= first then
  local CHUNK = 500
  for from = first, #ARGV, CHUNK do
    local to = math.min(from + CHUNK - 1, #ARGV)
    redis.call('HDEL', inbox, unpack(ARGV, from, to))
    local scored = {}
    for j = from, to do
      scored[#scored + 1] = now
      scored[#scored + 1] = ARGV[j]
    end
    redis.call('ZADD', decided, unpack(scored))
  end
  redis.call('ZREMRANGEBYSCORE', decided, '-inf', '(' .. since)
  redis.call('PEXPIRE', decided, keep)
end
return skipped
