-- KEYS: the old layout's journal (inbox), the current one's, the old lock and daemons.
-- ARGV: HSCAN cursor, entries to look at (COUNT).
-- Moves journal entries a page at a time (the whole hash is renamed when the current
-- layout has none): an entry the current journal holds too (the same message, journaled
-- by a daemon of this release) keeps the copy received first, as journaling does; a value
-- of a version this release does not read leaves the current copy in place. The current
-- journal lives at least as long as the old one would have. Returns {next cursor, moved,
-- kept (the current copy was the earlier)}, or {REFUSED} / {DAMAGED}.

local old, new = KEYS[1], KEYS[2]
if old_release_running(KEYS[3], KEYS[4]) then return {REFUSED} end
if not (of_kind(old, 'hash') and of_kind(new, 'hash')) then return {DAMAGED} end
if redis.call('EXISTS', old) == 0 then return {'0', 0, 0} end
if redis.call('EXISTS', new) == 0 and ARGV[1] == '0' then
  local n = redis.call('HLEN', old)
  redis.call('RENAME', old, new)
  return {'0', n, 0}
end

-- When a journal value says it was received (ms), nil for a version not known here: v1
-- has no version byte (its first byte is the top of the time, 0), v2 and v3 start with it.
local function received(v)
  local first = string.byte(v, 1)
  local from
  if first == 0 then from = 1 elseif first == 2 or first == 3 then from = 2 else return nil end
  if #v < from + 7 then return nil end
  local t = 0
  for i = from, from + 7 do t = t * 256 + string.byte(v, i) end
  return t
end

local ttl = redis.call('PTTL', old)
local page = redis.call('HSCAN', old, ARGV[1], 'COUNT', tonumber(ARGV[2]))
local moved, kept = 0, 0
local items = page[2]
for i = 1, #items, 2 do
  local entry, value = items[i], items[i + 1]
  local current = redis.call('HGET', new, entry)
  local a, b = received(value), current and received(current)
  if not current or (a and b and a < b) then
    redis.call('HSET', new, entry, value)
    moved = moved + 1
  else
    kept = kept + 1
  end
  redis.call('HDEL', old, entry)
end
carry_ttl(new, ttl)
return {page[1], moved, kept}
