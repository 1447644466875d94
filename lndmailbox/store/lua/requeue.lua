-- ARGV: peer, events trim, at (seconds), max redeliveries, sent by (ms; empty: any time).
-- The peer left before its unconfirmed messages were confirmed: each that lnd took at or
-- before `sent by` goes back to the front of the queue, in the order lnd took them, with
-- one redelivery more (counted and published as redelivered), but one redelivered `max
-- redeliveries` times already, which is removed and counted and published as unconfirmed
-- (lnd took it every time, it was never confirmed: not a silent loss). Those taken later
-- (on a connection after the departure) stay unconfirmed, in their order. Held order does
-- not change, unless some stay: they are then held before the ones that went back.
-- Returns {number put back, records put back..., records given up...}.

-- A peer with nothing unconfirmed costs one read and no write.
if redis.call('LLEN', UQ) == 0 then return {0} end
if not node_keys_ok() then return redis.error_reply(NODE_KEYS_DAMAGED) end
if not holds(Q, 'list') then
  return redis.error_reply('WRONGTYPE the peer\'s queue holds the wrong type of value')
end
repair()
local most, upto = tonumber(ARGV[4]), tonumber(ARGV[5])
local all = redis.call('LRANGE', UQ, 0, -1)
if #all == 0 then return {0} end
local ttl = redis.call('PTTL', UQ)
local back, gone, at, stay, db = {}, {}, {}, {}, 0
for i, e in ipairs(all) do
  local r = ent_rec(e)
  if upto and ent_sent(e) > upto then
    stay[#stay + 1] = e
  elseif rec_redeliveries(r) >= most then
    gone[#gone + 1] = r
    at[#at + 1] = i - 1
    db = db - rec_size(r)
    redis.call('HDEL', D, rec_digest(r))
  else
    back[#back + 1] = rec_with(r, rec_attempts(r), rec_redeliveries(r) + 1)
  end
end
if #stay == #all then return {0} end
redis.call('DEL', UQ)
if #stay > 0 then
  for _, e in ipairs(stay) do redis.call('RPUSH', UQ, e) end
  if ttl > 0 then redis.call('PEXPIRE', UQ, ttl) end
end
untell(at)
for i = #back, 1, -1 do redis.call('LPUSH', Q, back[i]) end
if #back > 0 then extend(Q, ttl) end
for _, r in ipairs(back) do
  tell('redelivered', hex(rec_id(r)), rec_size(r), '', ARGV[2], ARGV[3])
end
for _, r in ipairs(gone) do
  tell('unconfirmed', hex(rec_id(r)), rec_size(r), '', ARGV[2], ARGV[3])
end
account(-#gone, db)
local out = {#back}
for _, r in ipairs(back) do out[#out + 1] = r end
for _, r in ipairs(gone) do out[#out + 1] = r end
return out
