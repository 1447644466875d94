-- ARGV: peer, events trim, at (seconds), then (binary id, sent at ms) of each delivery to
-- confirm. Removes each message still unconfirmed from that very delivery (one with
-- another `sent at` went back to the queue and out again since: its own window decides),
-- and counts and publishes it as confirmed. Returns the confirmed records.

if not node_keys_ok() then return redis.error_reply(NODE_KEYS_DAMAGED) end
repair()
local out, db = {}, 0
for i = 4, #ARGV, 2 do
  local pos, e = find_sent(ARGV[i])
  if pos and ent_sent(e) == tonumber(ARGV[i + 1]) then
    take_sent(pos, e)
    local r = ent_rec(e)
    out[#out + 1] = r
    db = db - rec_size(r)
    tell('confirmed', hex(ARGV[i]), rec_size(r), '', ARGV[2], ARGV[3])
  end
end
if #out > 0 then account(-#out, db) end
return out
