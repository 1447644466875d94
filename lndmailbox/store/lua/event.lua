-- Shared helper, composed before the scripts that append to the event stream.
-- One entry of the event stream; every script that appends one goes through it.
-- `trim` is "<maxlen> <keep ms>": entries older than keep (by Redis's clock, which makes
-- the entry ids) are trimmed as new ones come (MINID ~), and the stream never holds much
-- more than maxlen entries whatever their age (the backstop, derived from the caps by
-- store/events.py). See docs/notifications.md for why these keep a TTL of real events.

local function trim_stream(stream, trim)
  local maxlen, keep = string.match(trim, '^(%d+) (%d+)$')
  if not maxlen then error('bad event stream trim ' .. tostring(trim)) end
  local t = redis.call('TIME')
  local minid = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(keep)
  if minid > 0 then redis.call('XTRIM', stream, 'MINID', '~', string.format('%d', minid)) end
  if redis.call('XLEN', stream) > tonumber(maxlen) then
    redis.call('XTRIM', stream, 'MAXLEN', '~', maxlen)
  end
end

local function append_event(stream, trim, kind, peer, id, size, reason, at)
  redis.call('XADD', stream, '*', 'kind', kind, 'peer', peer, 'id', id,
    'size', size, 'reason', reason, 'at', at)
  trim_stream(stream, trim)
end

-- Add n to the interval's summary of (kind, reason) for `who` (a peer or sender, hex, or
-- ''): what a peer's traffic alone can cause is summarized, not appended one by one.
local SUMMARY_KEEP = 86400
local function summarize(summary, kind, reason, who, n, at)
  redis.call('HINCRBY', summary, kind .. '|' .. reason .. '|' .. who, n)
  redis.call('HSETNX', summary, 'since', at)
  redis.call('EXPIRE', summary, SUMMARY_KEEP)
end
