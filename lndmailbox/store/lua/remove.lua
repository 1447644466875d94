-- ARGV: peer, binary id. Returns the removed record or ''.

repair()
local pos, r = find(ARGV[2])
if not pos then return '' end
take(pos, r)
account(-1, -rec_size(r))
return r
