#!lua
-- requeue: move dead-lettered tasks back to the end of their ready list with fresh attempts.
-- Flags: none (may write; refused whole when Redis is out of memory).
-- KEYS[1] tasks HASH  KEYS[2] attempts HASH  KEYS[3] dead ZSET  KEYS[4] dead_info HASH
-- KEYS[5] wake LIST  KEYS[6] counters HASH  KEYS[7] meta HASH
-- KEYS[8 .. 7+L] ready LIST of each level, in level order
-- ARGV[1] L  ARGV[2 .. 1+L] level names, in level order
-- ARGV[2+L] N (at most MAX_BATCH), then N ids
-- Returns: the ids requeued (ids not in the dead-letter set are skipped).
local L = tonumber(ARGV[1])
local n = tonumber(ARGV[2 + L])
check_batch(n, 'requeue')
local index = {}
for lv = 1, L do index[ARGV[1 + lv]] = lv end
local ids, seen = {}, {}
for i = 1, n do
  local id = ARGV[2 + L + i]
  if not seen[id] and redis.call('ZSCORE', KEYS[3], id) then ids[#ids + 1] = id end
  seen[id] = true
end
if #ids == 0 then return {} end
local metas = redis.call('HMGET', KEYS[7], unpack(ids))
local per_level = {}
for j, id in ipairs(ids) do
  local m = meta_of(metas[j])
  -- A level that no longer exists (the config changed), or a task without meta, goes to
  -- the lowest level, so the task is never stranded.
  local level = (m and index[m.level]) or L
  per_level[level] = per_level[level] or {}
  table.insert(per_level[level], id)
end
sliced('ZREM', KEYS[3], ids)
sliced('HDEL', KEYS[4], ids)
sliced('HDEL', KEYS[2], ids)
for level, members in pairs(per_level) do
  sliced('RPUSH', KEYS[7 + level], members)
end
redis.call('RPUSH', KEYS[5], '1')
redis.call('LTRIM', KEYS[5], -64, -1)
redis.call('HINCRBY', KEYS[6], 'requeued', #ids)
return ids
