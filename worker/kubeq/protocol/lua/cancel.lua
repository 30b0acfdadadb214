#!lua
-- cancel: a pending task is removed at once; a running one is flagged, and its worker learns
-- of it with its next heartbeat (the flag stays until the task ends: see settle).
-- Flags: none (may write; refused whole when Redis is out of memory).
-- KEYS[1] tasks HASH  KEYS[2] attempts HASH  KEYS[3] holders HASH  KEYS[4] cancel SET
-- KEYS[5] counters HASH  KEYS[6] dead ZSET  KEYS[7] results HASH  KEYS[8] results_expiry ZSET
-- KEYS[9] meta HASH
-- KEYS[10 .. 9+2L] two keys per level, in level order: ready LIST, delayed ZSET
-- ARGV[1] now_ms (0: Redis TIME)  ARGV[2] id  ARGV[3] result TTL ms  ARGV[4] done channel
-- ARGV[5] L  ARGV[6 .. 5+L] level names, in level order
-- Returns: 'cancelled' | 'requested' (running) | 'finished' | 'dead' | 'unknown'
local now = clock(ARGV[1])
local id = ARGV[2]
local L = tonumber(ARGV[5])
local record = redis.call('HGET', KEYS[1], id)
if not record then
  if redis.call('HEXISTS', KEYS[7], id) == 1 then
    return 'finished'
  end
  return 'unknown'
end
if redis.call('ZSCORE', KEYS[6], id) then
  return 'dead'
end
if redis.call('HEXISTS', KEYS[3], id) == 1 then
  redis.call('SADD', KEYS[4], id)
  return 'requested'
end
local m = meta_of(redis.call('HGET', KEYS[9], id))
-- Find the structure that holds it (its meta's level; every level when it has no meta).
local found = nil
for lv = 1, L do
  if not m or ARGV[5 + lv] == m.level then
    if redis.call('ZSCORE', KEYS[9 + lv * 2], id) then
      found = {'ZREM', KEYS[9 + lv * 2], id}
    elseif redis.call('LPOS', KEYS[8 + lv * 2], id) then
      found = {'LREM', KEYS[8 + lv * 2], 1, id}
    end
    if found then break end
  end
end
if not found then
  -- The record exists but sits in no structure: only a foreign writer can cause that.
  return redis.error_reply('PROTOCOL task ' .. id .. ' has a record but is in no queue structure')
end
local attempts = tonumber(redis.call('HGET', KEYS[2], id) or '0')
local outcome = cjson.encode({status = 'cancelled', finished_at = now, attempts = attempts,
  reason = 'cancelled before it ran'})
redis.call(unpack(found))
redis.call('HSET', KEYS[7], id, '{"task":' .. record .. ',"outcome":' .. outcome .. '}')
redis.call('ZADD', KEYS[8], now + tonumber(ARGV[3]), id)
redis.call('HDEL', KEYS[1], id)
redis.call('HDEL', KEYS[2], id)
redis.call('HDEL', KEYS[9], id)
redis.call('HINCRBY', KEYS[5], 'cancelled', 1)
redis.call('PUBLISH', ARGV[4], id)
prune_results(KEYS[7], KEYS[8], now, 1 + PRUNE_EXTRA)
return 'cancelled'
