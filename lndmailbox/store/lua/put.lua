-- Several messages, possibly for several peers, in one atomic step.
-- KEYS: the first message's seven keys, the summary, then queue, dedup and unconfirmed list
-- of each further message.
-- ARGV: first peer, max messages, max bytes per peer, max bytes total, events trim, at
-- (seconds), wake-ups ("<interval s> <most per interval>"), then for each message: peer,
-- record, key ttl ms, id hex.
-- Counts stored, duplicate and evicted with the change, and publishes them with it, or
-- summarizes them where a peer's traffic alone causes them:
-- * a duplicate is always summarized;
-- * the per-peer caps count the peer's unconfirmed messages too (lnd took them; they are
--   held until confirmed), and those are the oldest: they give way first;
-- * a put that has to evict marks its peer as flooded (usage field `flood:<peer>`) until
--   the peer holds nothing again (confirmed, expired or purged). A flooded peer's puts
--   are summarized (reply code 4 instead of 0), and so are the evictions of what they
--   stored (but see wake-ups below). The mark holds how many of the messages queued when
--   the flood began are still to be evicted: those were told one by one, and so is their
--   eviction (held order is FIFO, so they are the next to go; a record that leaves from
--   elsewhere, by expiry, confirmation or a purge by id, lowers the mark if it sat among
--   them: untell in peer.lua).
-- * still, a flooded peer's first store in each interval (by Redis's clock: TIME over the
--   interval, the same for every daemon and across restarts) is told one by one, so that a
--   flood cannot silence its wake-ups: usage field `woke:<peer>` holds the interval it was
--   last told in. At most <most per interval> such stores are told in one interval, over
--   all peers (usage fields `woke_interval`, `woke_count`); past that they are summarized.
--   The evictions of what they stored are summarized, like the rest of the flood's.
-- Returns one reply per message: {0 | 4, id, evicted records...} | {1, existing id} | {2}
-- (full) | {3} (the peer's keys hold the wrong types). Types are checked before anything
-- is written, so that a damaged key costs its own message and never leaves a batch half
-- done.

local maxn, maxb, maxt = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local trim, at = ARGV[5], ARGV[6]
local wake_every, wake_most = string.match(ARGV[7], '^(%d+) (%d+)$')
if not wake_every then return redis.error_reply('bad wake-ups ' .. tostring(ARGV[7])) end
local interval = math.floor(tonumber(redis.call('TIME')[1]) / tonumber(wake_every))
wake_most = tonumber(wake_most)
local S = KEYS[8]
if not (node_keys_ok() and holds(S, 'hash')) then return redis.error_reply(NODE_KEYS_DAMAGED) end

-- Publish an outcome of a message for PEER, or add it to the interval's summary (a
-- flooded peer's stores under the reason `flooded`).
local function outcome(told, kind, id, size, reason)
  if told then
    tell(kind, id, size, reason, trim, at)
  else
    redis.call('HINCRBY', C, kind, 1)
    if kind == 'stored' then reason = 'flooded' end
    summarize(S, kind, reason, PEER, 1, at)
  end
end

-- Whether a flooded peer's store is told one by one (and so wakes it): its first this
-- interval, while the interval's bound over all peers holds. Books it if so.
local function wake()
  if tonumber(redis.call('HGET', U, F_WOKE) or '') == interval then return false end
  local count = 0
  if tonumber(redis.call('HGET', U, 'woke_interval') or '') == interval then
    count = tonumber(redis.call('HGET', U, 'woke_count') or '0')
  end
  if count >= wake_most then return false end
  redis.call('HSET', U, F_WOKE, interval, 'woke_interval', interval, 'woke_count', count + 1)
  return true
end

local function put(rec, ttl, id)
  if not (holds(Q, 'list') and holds(D, 'hash') and holds(UQ, 'list')) then return {3} end
  repair()
  local digest = rec_digest(rec)
  local existing = redis.call('HGET', D, digest)
  -- this very write, run again: told or summarized already, as the peer's state says
  if existing == id then
    return {redis.call('HEXISTS', U, F_FLOOD) == 1 and 4 or 0, id}
  end
  if existing then
    outcome(false, 'duplicate', existing, rec_size(rec), '')
    return {1, existing}
  end
  local size = rec_size(rec)
  if size > maxb then return {2} end
  -- held order: the unconfirmed messages, then the queue
  local nu = redis.call('LLEN', UQ)
  local n = nu + redis.call('LLEN', Q)
  local pb = tonumber(redis.call('HGET', U, F_BYTES) or '0')
  local total = tonumber(redis.call('HGET', U, 'bytes') or '0')
  local evicted, evb = {}, 0
  while #evicted < n and (n - #evicted + 1 > maxn or pb - evb + size > maxb) do
    local k = #evicted
    local old
    if k < nu then
      old = ent_rec(redis.call('LINDEX', UQ, k))
    else
      old = redis.call('LINDEX', Q, k - nu)
    end
    evicted[#evicted + 1] = old
    evb = evb + rec_size(old)
  end
  if total - evb + size > maxt then return {2} end
  -- how many of the queued messages were told one by one; nil: the peer is not flooded
  local told_left = tonumber(redis.call('HGET', U, F_FLOOD) or '')
  if #evicted > 0 and told_left == nil then told_left = n end
  if #evicted > 0 then
    local from_uq = math.min(#evicted, nu)
    if from_uq > 0 then redis.call('LTRIM', UQ, from_uq, -1) end
    if #evicted > from_uq then redis.call('LTRIM', Q, #evicted - from_uq, -1) end
    for _, old in ipairs(evicted) do
      redis.call('HDEL', D, rec_digest(old))
      outcome(told_left > 0, 'evicted', hex(rec_id(old)), rec_size(old), 'peer_cap')
      if told_left > 0 then told_left = told_left - 1 end
    end
  end
  redis.call('RPUSH', Q, rec)
  redis.call('HSET', D, digest, id)
  account(1 - #evicted, size - evb)
  redis.call('ZADD', M, 'LT', rec_expires(rec), PEER)
  for _, key in ipairs({Q, D, M, U}) do extend(key, ttl) end
  if told_left ~= nil then redis.call('HSET', U, F_FLOOD, told_left) end
  local told = told_left == nil or wake()
  outcome(told, 'stored', id, size, '')
  local out = {told and 0 or 4, id}
  for _, old in ipairs(evicted) do out[#out + 1] = old end
  return out
end

local replies = {}
local k = 0
for i = 8, #ARGV, 4 do
  if k > 0 then
    -- the prelude's functions work on these: point them at this message's peer
    Q, D, UQ = KEYS[6 + 3 * k], KEYS[7 + 3 * k], KEYS[8 + 3 * k]
    PEER = ARGV[i]
    F_MSGS, F_BYTES, F_FLOOD = 'messages:' .. PEER, 'bytes:' .. PEER, 'flood:' .. PEER
    F_WOKE = 'woke:' .. PEER
  end
  replies[#replies + 1] = put(ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3])
  k = k + 1
end
return replies
