-- requeue: move dead-lettered tasks back to the end of their ready list with fresh attempts.
-- KEYS[1] tasks HASH  KEYS[2] attempts HASH  KEYS[3] dead ZSET  KEYS[4] dead_info HASH
-- KEYS[5] wake LIST  KEYS[6] counters HASH
-- KEYS[7 .. 6+L] ready LIST of each level, in level order
-- ARGV[1] L  ARGV[2 .. 1+L] level names, in level order  ARGV[2+L] N, then N ids
-- Returns: the ids requeued (ids not in the dead-letter set are skipped).
local L = tonumber(ARGV[1])
local n = tonumber(ARGV[2 + L])
local index = {}
for lv = 1, L do index[ARGV[1 + lv]] = lv end
local out = {}
for i = 1, n do
  local id = ARGV[2 + L + i]
  if redis.call('ZREM', KEYS[3], id) == 1 then
    local record = redis.call('HGET', KEYS[1], id)
    local level = record and index[cjson.decode(record)['priority']]
    redis.call('HDEL', KEYS[4], id)
    redis.call('HDEL', KEYS[2], id)
    -- A level that no longer exists (the config changed) falls back to the lowest one,
    -- so the task is never stranded.
    redis.call('RPUSH', KEYS[6 + (level or L)], id)
    out[#out + 1] = id
  end
end
if #out > 0 then
  redis.call('RPUSH', KEYS[5], '1')
  redis.call('LTRIM', KEYS[5], -64, -1)
  redis.call('HINCRBY', KEYS[6], 'requeued', #out)
end
return out
