-- Shared helper, composed before the scripts that append to the event stream.
-- One entry of the event stream; every script that appends one goes through it.

local function append_event(stream, maxlen, kind, peer, id, size, reason, at)
  redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'kind', kind, 'peer', peer, 'id', id,
    'size', size, 'reason', reason, 'at', at)
end
