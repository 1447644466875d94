-- ARGV: peer, events trim, at (seconds), sent at (ms), key grace (ms), then (binary id,
-- size) of each message lnd accepted, in the order it took them.
-- Counts and publishes each as delivered (lnd took it), also one evicted, expired or
-- purged while it was on its way (the peer got it all the same), and moves those still
-- queued to the end of the peer's unconfirmed list, stamped with `sent at`. There they
-- wait to be confirmed (confirm.lua) or to go back to the queue (requeue.lua); they stay
-- in the dedup hash, the usage totals, the caps and the mail index meanwhile.
-- Returns how many were still queued.

if not node_keys_ok() then return redis.error_reply(NODE_KEYS_DAMAGED) end
if not holds(UQ, 'list') then
  return redis.error_reply('WRONGTYPE the peer\'s unconfirmed list holds the wrong type of value')
end
repair()
local sent, grace = tonumber(ARGV[4]), tonumber(ARGV[5])
local stamp = u48_bytes(sent)
local n = 0
for i = 6, #ARGV, 2 do
  local pos, r = find(ARGV[i])
  if pos then
    -- out of the queue, into the unconfirmed list: held order does not change
    if pos == 0 then redis.call('LPOP', Q) else redis.call('LREM', Q, 1, r) end
    redis.call('RPUSH', UQ, stamp .. r)
    extend(UQ, math.max(rec_expires(r) - sent, 0) + grace)
    n = n + 1
  end
  tell('delivered', hex(ARGV[i]), ARGV[i + 1], '', ARGV[2], ARGV[3])
end
return n
