-- KEYS: lock; ARGV: owner token, lease ms.
-- Returns 1 if the owner still held the lock (its lease is extended), 2 if nobody held it
-- (the lease ran out, say while Redis was away: the owner takes it again), 0 if another
-- owner holds it. Runs under maxmemory pressure too (allow-oom): the lock is one small key.

local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return 0
