-- KEYS: the peer's seven keys in the current layout (as every per-peer script), then in
-- the old layout its queue, dedup hash, unconfirmed list, the node's mail, usage, lock
-- and daemons. ARGV[1] = peer hex.
-- Moves one peer's mail in one atomic step: its unconfirmed entries and queued records
-- go in front of what the current layout holds for it (they are older), in their order,
-- but a message the current layout holds already (its dedup digest) is dropped, not held
-- twice; the dedup hash is rebuilt from what moved; usage fields, node totals and the
-- mail entry move with the records (booked from what the lists hold), and the flood
-- marks when the peer held nothing in the current layout. Each key keeps its old key's
-- TTL (or a longer one it had); the rebuilt dedup hash lives as long as the longest. What the old books held and Redis had already dropped is counted as
-- expired, as the old release's repair would have. The peer's old keys, mail entry and
-- usage fields are gone afterwards, so a second run finds nothing.
-- Returns {messages moved, bytes, duplicates dropped, unconfirmed moved, counted expired},
-- or {REFUSED} (a daemon of the old release runs) or {DAMAGED} (a key of the wrong type,
-- or an old entry too short to be a record: checked before the first write, so a damaged
-- peer is left as it was and the rest of the run goes on).

local OQ, OD, OUQ, OM, OU = KEYS[8], KEYS[9], KEYS[10], KEYS[11], KEYS[12]
if old_release_running(KEYS[13], KEYS[14]) then return {REFUSED} end
if not (node_keys_ok() and holds(Q, 'list') and holds(D, 'hash') and holds(UQ, 'list')
    and of_kind(OQ, 'list') and of_kind(OD, 'hash') and of_kind(OUQ, 'list')
    and of_kind(OM, 'zset') and of_kind(OU, 'hash')) then
  return {DAMAGED}
end
local old_unconfirmed, old_queued = redis.call('LRANGE', OUQ, 0, -1), redis.call('LRANGE', OQ, 0, -1)
local function all_longer(list, least)
  for _, e in ipairs(list) do if #e < least then return false end end
  return true
end
if not (all_longer(old_unconfirmed, SENT + HEADER) and all_longer(old_queued, HEADER)) then
  return {DAMAGED}
end
repair()
local held_before = redis.call('LLEN', Q) + redis.call('LLEN', UQ)
local pn = tonumber(redis.call('HGET', OU, F_MSGS) or '0')
local pb = tonumber(redis.call('HGET', OU, F_BYTES) or '0')
local flood, woke = redis.call('HGET', OU, F_FLOOD), redis.call('HGET', OU, F_WOKE)
local ttl_q, ttl_uq, ttl_d = redis.call('PTTL', OQ), redis.call('PTTL', OUQ), redis.call('PTTL', OD)
local ttl = math.max(ttl_q, ttl_uq, ttl_d)
local n, b, dup, earliest, seen = 0, 0, 0, nil, {}

local function keep(r)
  local digest = rec_digest(r)
  if seen[digest] or redis.call('HEXISTS', D, digest) == 1 then
    dup = dup + 1
    return false
  end
  seen[digest] = true
  n, b = n + 1, b + rec_size(r)
  redis.call('HSET', D, digest, hex(rec_id(r)))
  if earliest == nil or rec_expires(r) < earliest then earliest = rec_expires(r) end
  return true
end

local function move(old, entries, new, record_of)
  local kept = {}
  for _, e in ipairs(entries) do
    if keep(record_of(e)) then kept[#kept + 1] = e end
  end
  for i = #kept, 1, -1 do redis.call('LPUSH', new, kept[i]) end
  redis.call('DEL', old)
  return #kept
end

local nu = move(OUQ, old_unconfirmed, UQ, ent_rec)
move(OQ, old_queued, Q, function(r) return r end)
redis.call('DEL', OD)
carry_ttl(Q, ttl_q)
carry_ttl(UQ, ttl_uq)
carry_ttl(D, ttl)
if n > 0 then
  redis.call('HINCRBY', U, F_MSGS, n)
  redis.call('HINCRBY', U, F_BYTES, b)
  redis.call('HINCRBY', U, 'messages', n)
  redis.call('HINCRBY', U, 'bytes', b)
  if held_before == 0 then
    if flood then redis.call('HSET', U, F_FLOOD, flood) end
    if woke then redis.call('HSET', U, F_WOKE, woke) end
  end
  -- the old score may be earlier than any record (never later): the sweep makes it exact
  local score = tonumber(redis.call('ZSCORE', OM, PEER) or '') or earliest
  redis.call('ZADD', M, 'LT', math.min(score, earliest), PEER)
  carry_ttl(M, math.max(ttl, redis.call('PTTL', OM)))
  carry_ttl(U, math.max(ttl, redis.call('PTTL', OU)))
end
redis.call('HDEL', OU, F_MSGS, F_BYTES, F_FLOOD, F_WOKE)
if pn ~= 0 or pb ~= 0 then
  redis.call('HINCRBY', OU, 'messages', -pn)
  redis.call('HINCRBY', OU, 'bytes', -pb)
end
redis.call('ZREM', OM, PEER)
local gone = math.max(pn - n - dup, 0)
if gone > 0 then redis.call('HINCRBY', C, 'expired', gone) end
return {n, b, dup, nu, gone}
