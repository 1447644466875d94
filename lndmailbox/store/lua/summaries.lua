-- KEYS: usage, then each peer's queue and unconfirmed list; ARGV: the peers' hex.
-- Read-only. Returns per peer {messages held (queued and unconfirmed), bytes, first 17
-- bytes of the oldest record (the first unconfirmed, else the queue's head), of the newest
-- record (the queue's tail, else the last unconfirmed), unconfirmed messages}.
-- Runs on its own (no shared helpers), with the flags of the shebang below.
#!lua flags=no-writes
local out = {}
for i, peer in ipairs(ARGV) do
  local q, uq = KEYS[2 * i], KEYS[2 * i + 1]
  local nq, nu = redis.call('LLEN', q), redis.call('LLEN', uq)
  local head, tail = '', ''
  if nu > 0 then
    head = string.sub(redis.call('LINDEX', uq, 0), 7, 23)
    tail = string.sub(redis.call('LINDEX', uq, -1), 7, 23)
  end
  if nq > 0 then
    if nu == 0 then head = string.sub(redis.call('LINDEX', q, 0), 1, 17) end
    tail = string.sub(redis.call('LINDEX', q, -1), 1, 17)
  end
  out[#out + 1] = nq + nu
  out[#out + 1] = tonumber(redis.call('HGET', KEYS[1], 'bytes:' .. peer) or '0')
  out[#out + 1] = head
  out[#out + 1] = tail
  out[#out + 1] = nu
end
return out
