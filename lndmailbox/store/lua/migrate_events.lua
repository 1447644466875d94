-- KEYS: the old layout's event stream, the current one's, the old lock and daemons.
-- ARGV: entries to move at most.
-- With no stream in the current layout the old one is renamed: its entries, their ids
-- and its consumer groups stay as they were, so a reader carries on from the last id it
-- read, under the new name. With both (the current layout was written to, then a daemon
-- of the old release ran again), the old entries are appended with their own ids, oldest
-- first, a page at a time; those not newer than the current stream's last id cannot be
-- (stream ids only grow) and are dropped (a reader of the old stream saw them there).
-- The old stream is gone once empty. Returns {moved, dropped, 1 when the old stream is
-- gone else 0}, or {REFUSED} / {DAMAGED}.

local old, new = KEYS[1], KEYS[2]
if old_release_running(KEYS[3], KEYS[4]) then return {REFUSED} end
if not (of_kind(old, 'stream') and of_kind(new, 'stream')) then return {DAMAGED} end
if redis.call('EXISTS', old) == 0 then return {0, 0, 1} end
if redis.call('EXISTS', new) == 0 then
  local n = redis.call('XLEN', old)
  redis.call('RENAME', old, new)
  return {n, 0, 1}
end

local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local info = redis.call('XINFO', 'STREAM', new)
local last = '0-0'
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then last = info[i + 1] end
end
local last_ms, last_seq = parse(last)
local moved, dropped, ids = 0, 0, {}
for _, entry in ipairs(redis.call('XRANGE', old, '-', '+', 'COUNT', tonumber(ARGV[1]))) do
  local id = entry[1]
  local ms, seq = parse(id)
  if ms > last_ms or (ms == last_ms and seq > last_seq) then
    redis.call('XADD', new, id, unpack(entry[2]))
    last_ms, last_seq = ms, seq
    moved = moved + 1
  else
    dropped = dropped + 1
  end
  ids[#ids + 1] = id
end
if #ids > 0 then redis.call('XDEL', old, unpack(ids)) end
if redis.call('XLEN', old) == 0 then
  redis.call('DEL', old)
  return {moved, dropped, 1}
end
return {moved, dropped, 0}
