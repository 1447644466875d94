-- Shared helpers, composed before every per-peer script (after event.lua).
-- Every per-peer script gets KEYS = queue, dedup, mail, usage, counters, events,
-- unconfirmed and ARGV[1] = peer hex.
-- A peer's messages are held in two lists: the queue (Q: waiting to be delivered, oldest
-- first) and the unconfirmed list (UQ: lnd accepted them, in the order it took them; each
-- entry is when it took it, ms u48, then the record). The per-peer usage fields, the caps,
-- the dedup hash and the mail index count both; by age, UQ comes before Q ("held order").
-- Record offsets below are Lua's 1-based positions of the layout in records.encode_record.

local HEADER = 52
local SENT = 6
local Q, D, M, U, C, E, UQ = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local PEER = ARGV[1]
local F_MSGS, F_BYTES = 'messages:' .. PEER, 'bytes:' .. PEER
-- The peer's flood mark (see put.lua): present while it is flooded past its cap.
local F_FLOOD = 'flood:' .. PEER
-- The summary interval (Redis's clock) in which a flooded peer's store was last told one by
-- one (put.lua): present only while it is flooded.
local F_WOKE = 'woke:' .. PEER

local function u48(s, i)
  local a, b, c, d, e, f = string.byte(s, i, i + 5)
  return ((((a * 256 + b) * 256 + c) * 256 + d) * 256 + e) * 256 + f
end
local function rec_id(r) return string.sub(r, 2, 11) end
local function rec_expires(r) return u48(r, 12) end
local function rec_size(r) return #r - HEADER end
local function rec_digest(r) return string.sub(redis.sha1hex(string.sub(r, HEADER + 1)), 1, 32) end
-- Version 1 holds attempts as a u16 at 18-19 and no redeliveries; version 2 a u8 of each.
local function rec_attempts(r)
  local hi, lo = string.byte(r, 18, 19)
  if string.byte(r, 1) == 1 then return hi * 256 + lo end
  return hi
end
local function rec_redeliveries(r)
  if string.byte(r, 1) == 1 then return 0 end
  return string.byte(r, 19)
end
-- The record as version 2 with these counts (held at 255): a version 1 record becomes one
-- the first time a script changes it.
local function rec_with(r, attempts, redeliveries)
  return string.char(2) .. string.sub(r, 2, 17)
    .. string.char(math.min(attempts, 255), math.min(redeliveries, 255)) .. string.sub(r, 20)
end
-- An unconfirmed entry: when lnd took it (ms), then the record.
local function ent_sent(e) return u48(e, 1) end
local function ent_rec(e) return string.sub(e, SENT + 1) end
local function ent_id(e) return string.sub(e, SENT + 2, SENT + 11) end
local function u48_bytes(n)
  local out = {}
  for i = 6, 1, -1 do
    out[i] = string.char(n % 256)
    n = math.floor(n / 256)
  end
  return table.concat(out)
end
local function holds(key, kind)
  local t = redis.call('TYPE', key)['ok']
  return t == kind or t == 'none'
end
local function hex(s) return (string.gsub(s, '.', function(c) return string.format('%02x', string.byte(c)) end)) end

-- Count an outcome and append its event, in the same step as the change it describes: a
-- crash can then lose neither (the `stored` event is what wakes a phone).
local function tell(kind, id, size, reason, trim, at)
  redis.call('HINCRBY', C, kind, 1)
  append_event(E, trim, kind, PEER, id, size, reason, at)
end

-- The node-wide keys hold what the mailbox writes there (or nothing yet). Scripts that
-- write them check first: Redis does not roll a failed script back.
local function node_keys_ok()
  return holds(M, 'zset') and holds(U, 'hash') and holds(C, 'hash') and holds(E, 'stream')
end
local NODE_KEYS_DAMAGED = 'WRONGTYPE a node-wide mailbox key holds the wrong type of value'

-- Keys are only ever extended: a key lives until its latest message expired plus the grace.
local function extend(key, ttl)
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
end

-- The peer's usage fields count what its two lists hold. When they do not (Redis expired a
-- list, or someone deleted or edited one behind the mailbox's back), book what the lists
-- hold: the fields, the node totals, the dedup hash and the mail index; what went missing
-- is counted as expired.
local function repair()
  local nq, nu = redis.call('LLEN', Q), redis.call('LLEN', UQ)
  local pn = tonumber(redis.call('HGET', U, F_MSGS) or '0')
  local pb = tonumber(redis.call('HGET', U, F_BYTES) or '0')
  if nq + nu == 0 then
    redis.call('HDEL', U, F_FLOOD, F_WOKE)
    if pn ~= 0 or pb ~= 0 then
      redis.call('HDEL', U, F_MSGS, F_BYTES)
      local tn = redis.call('HINCRBY', U, 'messages', -pn)
      redis.call('HINCRBY', U, 'bytes', -pb)
      if tn <= 0 then redis.call('DEL', U) end
      if pn > 0 then redis.call('HINCRBY', C, 'expired', pn) end
    end
    redis.call('ZREM', M, PEER)
    redis.call('DEL', D)
    return
  end
  if pn == nq + nu then return end
  local n, b, earliest = 0, 0, nil
  local ttl = math.max(redis.call('PTTL', Q), redis.call('PTTL', UQ))
  redis.call('DEL', D)
  local function book(r)
    n = n + 1
    b = b + rec_size(r)
    redis.call('HSET', D, rec_digest(r), hex(rec_id(r)))
    if earliest == nil or rec_expires(r) < earliest then earliest = rec_expires(r) end
  end
  for _, e in ipairs(redis.call('LRANGE', UQ, 0, -1)) do book(ent_rec(e)) end
  for _, r in ipairs(redis.call('LRANGE', Q, 0, -1)) do book(r) end
  if ttl > 0 then redis.call('PEXPIRE', D, ttl) end
  redis.call('HSET', U, F_MSGS, n, F_BYTES, b)
  redis.call('HINCRBY', U, 'messages', n - pn)
  redis.call('HINCRBY', U, 'bytes', b - pb)
  if pn > n then redis.call('HINCRBY', C, 'expired', pn - n) end
  redis.call('ZADD', M, earliest, PEER)
end

-- Book dn messages / db bytes more (or fewer) for the peer, and tidy up when it holds
-- nothing (neither queued nor unconfirmed).
local function account(dn, db)
  if dn ~= 0 or db ~= 0 then
    redis.call('HINCRBY', U, F_MSGS, dn)
    redis.call('HINCRBY', U, F_BYTES, db)
    redis.call('HINCRBY', U, 'messages', dn)
    redis.call('HINCRBY', U, 'bytes', db)
  end
  if redis.call('EXISTS', Q) == 0 and redis.call('EXISTS', UQ) == 0 then
    -- a peer holding nothing owes nothing: what its fields still say was never booked
    -- right, so the node totals drop it too
    local pn = tonumber(redis.call('HGET', U, F_MSGS) or '0')
    local pb = tonumber(redis.call('HGET', U, F_BYTES) or '0')
    if pn ~= 0 or pb ~= 0 then
      redis.call('HINCRBY', U, 'messages', -pn)
      redis.call('HINCRBY', U, 'bytes', -pb)
    end
    redis.call('HDEL', U, F_MSGS, F_BYTES, F_FLOOD, F_WOKE)
    redis.call('ZREM', M, PEER)
    redis.call('DEL', D)
  end
  if tonumber(redis.call('HGET', U, 'messages') or '0') <= 0 then redis.call('DEL', U) end
end

-- Position (0-based) and record of the queued message with this binary id, head first.
local function find(id)
  local head = redis.call('LINDEX', Q, 0)
  if not head then return nil end
  if rec_id(head) == id then return 0, head end
  local len = redis.call('LLEN', Q)
  local i = 1
  while i < len do
    local chunk = redis.call('LRANGE', Q, i, i + 31)
    for j, r in ipairs(chunk) do
      if rec_id(r) == id then return i + j - 1, r end
    end
    i = i + 32
  end
  return nil
end

-- Position (0-based) and entry of the unconfirmed message with this binary id.
local function find_sent(id)
  local all = redis.call('LRANGE', UQ, 0, -1)
  for i, e in ipairs(all) do
    if ent_id(e) == id then return i - 1, e end
  end
  return nil
end

-- A flooded peer's first `flood:<peer>` messages in held order (unconfirmed, then queued)
-- are the ones told one by one (put.lua). Records removed from anywhere: `positions` are
-- where they sat in held order (0-based, all taken before any was removed); those inside
-- the told prefix shorten it.
local function untell(positions)
  local told = tonumber(redis.call('HGET', U, F_FLOOD) or '')
  if not told then return end
  local k = 0
  for _, pos in ipairs(positions) do
    if pos < told then k = k + 1 end
  end
  if k > 0 then redis.call('HSET', U, F_FLOOD, math.max(told - k, 0)) end
end

-- Take one record out of the queue (at position pos) with its dedup entry.
local function take(pos, r)
  local held = pos + redis.call('LLEN', UQ)
  if pos == 0 then redis.call('LPOP', Q) else redis.call('LREM', Q, 1, r) end
  redis.call('HDEL', D, rec_digest(r))
  untell({held})
end

-- Take one entry out of the unconfirmed list (at position pos) with its dedup entry.
local function take_sent(pos, e)
  if pos == 0 then redis.call('LPOP', UQ) else redis.call('LREM', UQ, 1, e) end
  redis.call('HDEL', D, rec_digest(ent_rec(e)))
  untell({pos})
end
