-- KEYS: lock; ARGV: owner token, lease ms. Returns 1 if the owner still held it.

if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
