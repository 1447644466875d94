-- ARGV: peer, binary id or '' (everything). Returns the number of messages removed.

repair()
if ARGV[2] == '' then
  local n = redis.call('LLEN', Q)
  local pb = tonumber(redis.call('HGET', U, F_BYTES) or '0')
  redis.call('DEL', Q, D)
  account(-n, -pb)
  return n
end
local pos, r = find(ARGV[2])
if not pos then return 0 end
take(pos, r)
account(-1, -rec_size(r))
return 1
