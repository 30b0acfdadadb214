-- cancel: a pending task is removed at once; a running one is flagged, and its worker learns
-- of it with its next heartbeat.
-- KEYS[1] tasks HASH  KEYS[2] attempts HASH  KEYS[3] holders HASH  KEYS[4] cancel SET
-- KEYS[5] counters HASH  KEYS[6] dead ZSET  KEYS[7] results HASH  KEYS[8] results_expiry ZSET
-- KEYS[9 .. 8+2L] two keys per level, in level order: ready LIST, delayed ZSET
-- ARGV[1] now_ms  ARGV[2] id  ARGV[3] result TTL ms  ARGV[4] done channel  ARGV[5] L
-- ARGV[6 .. 5+L] level names, in level order
-- Returns: 'cancelled' | 'requested' (running) | 'finished' | 'dead' | 'unknown'
local now = tonumber(ARGV[1])
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
local priority = cjson.decode(record)['priority']
local removed = 0
for lv = 1, L do
  if ARGV[5 + lv] == priority then
    removed = redis.call('ZREM', KEYS[8 + lv * 2], id) + redis.call('LREM', KEYS[7 + lv * 2], 1, id)
  end
end
if removed == 0 then
  -- The record exists but sits in no structure: only a foreign writer can cause that.
  return redis.error_reply('PROTOCOL task ' .. id .. ' has a record but is in no queue structure')
end
local attempts = tonumber(redis.call('HGET', KEYS[2], id) or '0')
local outcome = cjson.encode({status = 'cancelled', finished_at = now, attempts = attempts,
  reason = 'cancelled before it ran'})
redis.call('HSET', KEYS[7], id, '{"task":' .. record .. ',"outcome":' .. outcome .. '}')
redis.call('ZADD', KEYS[8], now + tonumber(ARGV[3]), id)
redis.call('HDEL', KEYS[1], id)
redis.call('HDEL', KEYS[2], id)
redis.call('HINCRBY', KEYS[5], 'cancelled', 1)
redis.call('PUBLISH', ARGV[4], id)
return 'cancelled'
