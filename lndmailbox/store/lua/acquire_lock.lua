-- KEYS: lock, counters; ARGV: owner token, lease ms.
-- Takes the lock for the lease if nobody holds it, and counts the change of leader
-- (`leader_changes` in counters). Returns the holder's token afterwards: the owner's own
-- when it took the lock (or already held it: a try whose reply was lost), another's when
-- another daemon leads. Runs under maxmemory pressure too (allow-oom): a standby must be
-- able to take over while Redis refuses everything else.

local holder = redis.call('GET', KEYS[1])
if holder then
  return holder
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('HINCRBY', KEYS[2], 'leader_changes', 1)
return ARGV[1]
