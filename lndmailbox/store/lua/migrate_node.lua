-- KEYS: old then current counters, allowlist, decided, summary, delivery requests, usage;
-- then the current journal (inbox), the old lock and daemons.
-- The node-wide keys, once every peer has moved (store/migrate.py), in one atomic step:
-- counters are added into the current ones, the allowlist is the union of both, decided
-- entries keep the later time (and a journal entry the old release decided leaves the
-- current journal: a late copy, by journal.lua's rule), the summary's counts are added (its interval starts at
-- the earlier `since`), delivery requests are appended after the current ones; each key
-- lives at least as long as the old one would have. The old usage's node-wide fields go:
-- its totals moved with each peer, and its wake-ups of the current interval move unless
-- the current usage counts that interval's already.
-- A key of another type than the mailbox writes, or a count that is not a whole number, is
-- left where it is (reported damaged): the checks come before the key's first write.
-- Returns {counters, allowlist members added, decided, summary fields, delivery
-- requests, damaged keys}, or {REFUSED}.

if old_release_running(KEYS[14], KEYS[15]) then return {REFUSED} end
local OC, C, OA, A, OX, X, OS, S, OR, R, OU, U, J = unpack(KEYS, 1, 13)
local damaged = 0
local function pair_of(old, new, kind)
  if of_kind(old, kind) and of_kind(new, kind) then return redis.call('EXISTS', old) == 1 end
  damaged = damaged + 1
  return false
end
-- A hash's fields and values, if every value but `except`'s is a whole number (and
-- HINCRBY takes it); else nil, and the key counts as damaged.
local function counts_of(key, except)
  local all = redis.call('HGETALL', key)
  for i = 1, #all, 2 do
    if all[i] ~= except and not string.match(all[i + 1], '^-?%d+$') then
      damaged = damaged + 1
      return nil
    end
  end
  return all
end
local function unpacked(list, each)
  for from = 1, #list, 500 do each(unpack(list, from, math.min(from + 499, #list))) end
end

local counters = 0
local all = pair_of(OC, C, 'hash') and counts_of(OC)
if all then
  for i = 1, #all, 2 do redis.call('HINCRBY', C, all[i], all[i + 1]) end
  counters = #all / 2
  redis.call('DEL', OC)
end

local added = 0
if pair_of(OA, A, 'set') then
  local before = redis.call('SCARD', A)
  redis.call('SUNIONSTORE', A, A, OA)
  added = redis.call('SCARD', A) - before
  redis.call('DEL', OA)
end

local decided = 0
if pair_of(OX, X, 'zset') then
  local ttl = math.max(redis.call('PTTL', OX), redis.call('PTTL', X))
  decided = redis.call('ZCARD', OX)
  if of_kind(J, 'hash') then
    unpacked(redis.call('ZRANGE', OX, 0, -1), function(...) redis.call('HDEL', J, ...) end)
  end
  redis.call('ZUNIONSTORE', X, 2, X, OX, 'AGGREGATE', 'MAX')
  redis.call('DEL', OX)
  carry_ttl(X, ttl)
end

local summary = 0
all = pair_of(OS, S, 'hash') and counts_of(OS, 'since')
if all then
  local ttl = redis.call('PTTL', OS)
  for i = 1, #all, 2 do
    local field, value = all[i], all[i + 1]
    if field == 'since' then
      local since = tonumber(redis.call('HGET', S, 'since') or '')
      if not since or tonumber(value) < since then redis.call('HSET', S, 'since', value) end
    else
      redis.call('HINCRBY', S, field, value)
      summary = summary + 1
    end
  end
  redis.call('DEL', OS)
  carry_ttl(S, ttl)
end

local requests = 0
if pair_of(OR, R, 'list') then
  local ttl = redis.call('PTTL', OR)
  local peers = redis.call('LRANGE', OR, 0, -1)
  unpacked(peers, function(...) redis.call('RPUSH', R, ...) end)
  requests = #peers
  redis.call('DEL', OR)
  carry_ttl(R, ttl)
end

if of_kind(OU, 'hash') and of_kind(U, 'hash') then
  local interval, count = unpack(redis.call('HMGET', OU, 'woke_interval', 'woke_count'))
  -- (into a usage that holds mail: one without would be left without a TTL)
  if interval and count and redis.call('EXISTS', U) == 1
      and redis.call('HEXISTS', U, 'woke_interval') == 0 then
    redis.call('HSET', U, 'woke_interval', interval, 'woke_count', count)
  end
  redis.call('HDEL', OU, 'messages', 'bytes', 'woke_interval', 'woke_count')
end
return {counters, added, decided, summary, requests, damaged}
