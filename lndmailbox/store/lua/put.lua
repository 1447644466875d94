-- Several messages, possibly for several peers, in one atomic step.
-- KEYS: the first message's six keys, then queue and dedup of each further message.
-- ARGV: first peer, max messages, max bytes per peer, max bytes total, events maxlen, at
-- (seconds), then for each message: peer, record, key ttl ms, id hex.
-- Counts and publishes stored, duplicate and evicted with the change.
-- Returns one reply per message: {0, id, evicted records...} | {1, existing id} | {2} (full)
-- | {3} (the peer's keys hold the wrong types). Types are checked before anything is written,
-- so that a damaged key costs its own message and never leaves a batch half done.

local maxn, maxb, maxt = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local maxlen, at = ARGV[5], ARGV[6]
if not node_keys_ok() then return redis.error_reply(NODE_KEYS_DAMAGED) end

local function put(rec, ttl, id)
  if not (holds(Q, 'list') and holds(D, 'hash')) then return {3} end
  repair()
  local digest = rec_digest(rec)
  local existing = redis.call('HGET', D, digest)
  if existing == id then return {0, id} end -- this very write, run again: told already
  if existing then
    tell('duplicate', existing, rec_size(rec), '', maxlen, at)
    return {1, existing}
  end
  local size = rec_size(rec)
  if size > maxb then return {2} end
  local n = redis.call('LLEN', Q)
  local pb = tonumber(redis.call('HGET', U, F_BYTES) or '0')
  local total = tonumber(redis.call('HGET', U, 'bytes') or '0')
  local evicted, evb = {}, 0
  while #evicted < n and (n - #evicted + 1 > maxn or pb - evb + size > maxb) do
    local old = redis.call('LINDEX', Q, #evicted)
    evicted[#evicted + 1] = old
    evb = evb + rec_size(old)
  end
  if total - evb + size > maxt then return {2} end
  if #evicted > 0 then
    redis.call('LTRIM', Q, #evicted, -1)
    for _, old in ipairs(evicted) do
      redis.call('HDEL', D, rec_digest(old))
      tell('evicted', hex(rec_id(old)), rec_size(old), 'peer_cap', maxlen, at)
    end
  end
  redis.call('RPUSH', Q, rec)
  redis.call('HSET', D, digest, id)
  account(1 - #evicted, size - evb)
  redis.call('ZADD', M, 'LT', rec_expires(rec), PEER)
  for _, key in ipairs({Q, D, M, U}) do extend(key, ttl) end
  tell('stored', id, size, '', maxlen, at)
  local out = {0, id}
  for _, old in ipairs(evicted) do out[#out + 1] = old end
  return out
end

local replies = {}
local k = 0
for i = 7, #ARGV, 4 do
  if k > 0 then
    -- the prelude's functions work on these: point them at this message's peer
    Q, D = KEYS[5 + 2 * k], KEYS[6 + 2 * k]
    PEER = ARGV[i]
    F_MSGS, F_BYTES = 'messages:' .. PEER, 'bytes:' .. PEER
  end
  replies[#replies + 1] = put(ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3])
  k = k + 1
end
return replies
