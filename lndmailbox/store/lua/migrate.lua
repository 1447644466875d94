-- Shared helpers, composed before every script that moves a mailbox from the old key
-- layout (lndmailbox:<node>:..., the releases before the node's hash tag) into the
-- current one (store/migrate.py). Those releases only ran on one Redis (they refused
-- Cluster), so these scripts carry no-cluster: one node's old keys span slots.

-- A daemon of the old release leads the node (its lock) or beat less than 10 s ago (its
-- daemons hash, leader or standby): it would go on writing the old layout.
local REFUSED = -1
local function old_release_running(lock, daemons)
  return redis.call('EXISTS', lock) == 1 or redis.call('EXISTS', daemons) == 1
end

local function of_kind(key, kind)
  local t = redis.call('TYPE', key)['ok']
  return t == kind or t == 'none'
end
local DAMAGED = -2

-- TTLs only grow: the key lives at least as long as the old one did (ttl ms; 0 or less,
-- the old key had none or is gone: the key is left as it is).
local function carry_ttl(key, ttl)
  if ttl > 0 and redis.call('EXISTS', key) == 1 and redis.call('PTTL', key) < ttl then
    redis.call('PEXPIRE', key, ttl)
  end
end
