-- KEYS: counters, events, summary. ARGV: events trim, at, close (1 or 0), number of
-- counters, (name, by)..., number of summary additions, (kind, reason, who, by)...,
-- then (kind, peer, id, size, reason)... of the events to append. One command, so a batch
-- lands whole or not at all. With close = 1 the interval's summary ends: one `summary`
-- entry per (kind, reason) with its count and its top peers (or senders), and the summary
-- hash starts again empty. Returns the number of summary entries appended.

local C, E, S = KEYS[1], KEYS[2], KEYS[3]
local trim, at, close = ARGV[1], ARGV[2], ARGV[3] == '1'
local TOP = 5
local i = 5
for _ = 1, tonumber(ARGV[4]) do
  redis.call('HINCRBY', C, ARGV[i], ARGV[i + 1])
  i = i + 2
end
local n = tonumber(ARGV[i])
i = i + 1
for _ = 1, n do
  summarize(S, ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], at)
  i = i + 4
end
while i <= #ARGV do
  append_event(E, trim, ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], at)
  i = i + 5
end
if not close or redis.call('EXISTS', S) == 0 then return 0 end

-- kind|reason -> {count, {who, count}...}, in the order first met (sorted below)
local groups, order = {}, {}
local flat = redis.call('HGETALL', S)
local since = ''
for j = 1, #flat, 2 do
  local field, count = flat[j], tonumber(flat[j + 1])
  if field == 'since' then
    since = flat[j + 1]
  else
    local kind, reason, who = string.match(field, '^([^|]*)|([^|]*)|([^|]*)$')
    if kind then
      local key = kind .. '|' .. reason
      local g = groups[key]
      if not g then
        g = {kind = kind, reason = reason, count = 0, who = {}}
        groups[key] = g
        order[#order + 1] = key
      end
      g.count = g.count + count
      if who ~= '' then g.who[#g.who + 1] = {who, count} end
    end
  end
end
table.sort(order)
for _, key in ipairs(order) do
  local g = groups[key]
  table.sort(g.who, function(a, b) return a[2] > b[2] or (a[2] == b[2] and a[1] < b[1]) end)
  local top = {}
  for j = 1, math.min(TOP, #g.who) do top[j] = g.who[j][1] .. ':' .. g.who[j][2] end
  redis.call('XADD', E, '*', 'kind', 'summary', 'peer', '', 'id', '', 'size', 0,
    'reason', g.reason, 'at', at, 'of', g.kind, 'count', g.count,
    'top', table.concat(top, ','), 'peers', #g.who, 'since', since)
  trim_stream(E, trim)
end
redis.call('DEL', S)
return #order
