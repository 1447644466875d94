-- KEYS: usage, then one queue per peer; ARGV: the peers' hex. Read-only. Returns per peer
-- {messages, bytes, first 17 bytes of the oldest record, of the newest record}.
-- Runs on its own (no shared helpers), with the flags of the shebang below.
#!lua flags=no-writes,no-cluster
local out = {}
for i, peer in ipairs(ARGV) do
  local q = KEYS[i + 1]
  local head = redis.call('LINDEX', q, 0) or ''
  local tail = redis.call('LINDEX', q, -1) or ''
  out[#out + 1] = redis.call('LLEN', q)
  out[#out + 1] = tonumber(redis.call('HGET', KEYS[1], 'bytes:' .. peer) or '0')
  out[#out + 1] = string.sub(head, 1, 17)
  out[#out + 1] = string.sub(tail, 1, 17)
end
return out
