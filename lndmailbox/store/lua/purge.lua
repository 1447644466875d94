-- ARGV: peer, binary id or '' (everything, queued and unconfirmed). Returns the number of
-- messages removed.

repair()
if ARGV[2] == '' then
  local n = redis.call('LLEN', Q) + redis.call('LLEN', UQ)
  local pb = tonumber(redis.call('HGET', U, F_BYTES) or '0')
  redis.call('DEL', Q, UQ, D)
  account(-n, -pb)
  return n
end
local pos, r = find(ARGV[2])
if pos then
  take(pos, r)
  account(-1, -rec_size(r))
  return 1
end
local spos, e = find_sent(ARGV[2])
if not spos then return 0 end
take_sent(spos, e)
account(-1, -rec_size(ent_rec(e)))
return 1
