-- KEYS: inbox (hash), decided (sorted set).
-- ARGV: decided TTL ms, then the entries decided.
-- The deletes-only half of journal.lua, for when Redis refuses that script for memory
-- (over maxmemory). Flagged allow-oom, so Redis runs it even then; so it must never add
-- memory: no HSET, no ZADD, no PEXPIRE (which would keep `decided` longer). Each decided
-- entry leaves the inbox, and what `decided` holds older than the decided TTL is trimmed;
-- the entries are not recorded in `decided` (daemon/journal_writer.py says why that is
-- safe). Returns the number of entries that were in the inbox.

local inbox, decided = KEYS[1], KEYS[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local since = now - tonumber(ARGV[1])
local deleted = 0
local CHUNK = 500
for from = 2, #ARGV, CHUNK do
  local to = math.min(from + CHUNK - 1, #ARGV)
  deleted = deleted + redis.call('HDEL', inbox, unpack(ARGV, from, to))
end
redis.call('ZREMRANGEBYSCORE', decided, '-inf', '(' .. since)
return deleted
