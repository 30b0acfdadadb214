-- purge: delete dead-lettered tasks for good.
-- KEYS[1] tasks HASH  KEYS[2] attempts HASH  KEYS[3] dead ZSET  KEYS[4] dead_info HASH
-- ARGV[1] N, then N ids
-- Returns: how many were purged (ids not in the dead-letter set are skipped).
local purged = 0
for i = 1, tonumber(ARGV[1]) do
  local id = ARGV[1 + i]
  if redis.call('ZREM', KEYS[3], id) == 1 then
    redis.call('HDEL', KEYS[1], id)
    redis.call('HDEL', KEYS[2], id)
    redis.call('HDEL', KEYS[4], id)
    purged = purged + 1
  end
end
return purged
