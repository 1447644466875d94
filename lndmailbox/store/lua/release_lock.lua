-- KEYS: lock; ARGV: owner token. Deletes the lock if the owner still holds it; returns 1 if so.

if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
