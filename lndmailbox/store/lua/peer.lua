-- Shared helpers, composed before every per-peer script (after event.lua).
-- Every per-peer script gets KEYS = queue, dedup, mail, usage, counters, events and
-- ARGV[1] = peer hex.
-- Record offsets below are Lua's 1-based positions of the layout in records.encode_record.

local HEADER = 52
local Q, D, M, U, C, E = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
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

-- The peer's queue is gone (Redis expired it, or someone deleted it) while the node's
-- index still counts it: forget it there, and count what Redis dropped as expired.
local function repair()
  if redis.call('EXISTS', Q) == 1 then return end
  local pn = tonumber(redis.call('HGET', U, F_MSGS) or '0')
  local pb = tonumber(redis.call('HGET', U, F_BYTES) or '0')
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
end

-- Book dn messages / db bytes more (or fewer) for the peer, and tidy up when it is empty.
local function account(dn, db)
  if dn ~= 0 or db ~= 0 then
    redis.call('HINCRBY', U, F_MSGS, dn)
    redis.call('HINCRBY', U, F_BYTES, db)
    redis.call('HINCRBY', U, 'messages', dn)
    redis.call('HINCRBY', U, 'bytes', db)
  end
  if redis.call('EXISTS', Q) == 0 then
    -- an empty queue owes nothing: what its fields still say was never booked right
    -- (a hand-removed element), so the node totals drop it too
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

-- Position (0-based) and record of the message with this binary id, head first.
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

-- A flooded peer's first `flood:<peer>` messages are the ones told one by one (put.lua).
-- Records removed from anywhere in the queue: `positions` are where they sat (0-based, all
-- taken before any was removed); those inside the told prefix shorten it.
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
  if pos == 0 then redis.call('LPOP', Q) else redis.call('LREM', Q, 1, r) end
  redis.call('HDEL', D, rec_digest(r))
  untell({pos})
end
