-- KEYS: the old decided, the current decided and journal (inbox), the old lock and daemons.
-- The first step of a run (store/migrate.py), before any peer moves: the old release's
-- record of its last decisions joins the current one (the later decision kept), and an
-- entry it names leaves the current journal (a late copy, by journal.lua's rule). First,
-- since that record expires 15 s after the old leader's last decision: a run that took
-- longer to reach it (many peers) would find it gone and decide those copies again.
-- Returns {entries moved}, or {REFUSED} / {DAMAGED} (then migrate_node.lua reports it).

if old_release_running(KEYS[4], KEYS[5]) then return {REFUSED} end
local OX, X, J = KEYS[1], KEYS[2], KEYS[3]
if not (of_kind(OX, 'zset') and of_kind(X, 'zset') and of_kind(J, 'hash')) then
  return {DAMAGED}
end
if redis.call('EXISTS', OX) == 0 then return {0} end
local ttl = math.max(redis.call('PTTL', OX), redis.call('PTTL', X))
local members = redis.call('ZRANGE', OX, 0, -1)
for from = 1, #members, 500 do
  redis.call('HDEL', J, unpack(members, from, math.min(from + 499, #members)))
end
redis.call('ZUNIONSTORE', X, 2, X, OX, 'AGGREGATE', 'MAX')
redis.call('DEL', OX)
carry_ttl(X, ttl)
return {#members}
