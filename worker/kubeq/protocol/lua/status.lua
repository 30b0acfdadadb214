#!lua flags=no-writes
-- status: every piece of state about one task, read atomically.
-- Flags: no-writes (run with EVALSHA_RO: works for a read-only ACL user and on replicas).
-- KEYS[1] tasks HASH  KEYS[2] attempts HASH  KEYS[3] holders HASH  KEYS[4] dead ZSET
-- KEYS[5] dead_info HASH  KEYS[6] results HASH  KEYS[7] cancel SET
-- KEYS[8] results_expiry ZSET  KEYS[9 .. 8+L] delayed ZSET of each level, in level order
-- KEYS[9+L] progress HASH
-- ARGV[1] id  ARGV[2] L  ARGV[3] now_ms (0: Redis TIME; a result past its TTL is gone,
-- pruned or not)
-- Returns: {terminal record, task record, attempts, holder, dead at ms, dead outcome,
--           due ms (delayed), cancel requested (0/1), progress JSON}; absent pieces are nil.
local id = ARGV[1]
local L = tonumber(ARGV[2])
local now = clock(ARGV[3])
local due = false
for lv = 1, L do
  local score = redis.call('ZSCORE', KEYS[8 + lv], id)
  if score then due = score end
end
local terminal = redis.call('HGET', KEYS[6], id)
if terminal and tonumber(redis.call('ZSCORE', KEYS[8], id) or '0') <= now then
  terminal = false
end
return {
  terminal,
  redis.call('HGET', KEYS[1], id),
  redis.call('HGET', KEYS[2], id),
  redis.call('HGET', KEYS[3], id),
  redis.call('ZSCORE', KEYS[4], id),
  redis.call('HGET', KEYS[5], id),
  due,
  redis.call('SISMEMBER', KEYS[7], id),
  redis.call('HGET', KEYS[9 + L], id),
}
