#!lua flags=allow-oom
-- purge: delete dead-lettered tasks for good.
-- Flags: allow-oom. It only frees memory; under maxmemory it is how an operator makes room.
-- KEYS[1] tasks HASH  KEYS[2] attempts HASH  KEYS[3] dead ZSET  KEYS[4] dead_info HASH
-- KEYS[5] meta HASH
-- ARGV[1] N (at most MAX_BATCH), then N ids
-- Returns: how many were purged (ids not in the dead-letter set are skipped).
local n = tonumber(ARGV[1])
check_batch(n, 'purge')
local ids, seen = {}, {}
for i = 1, n do
  local id = ARGV[1 + i]
  if not seen[id] and redis.call('ZSCORE', KEYS[3], id) then ids[#ids + 1] = id end
  seen[id] = true
end
if #ids > 0 then
  sliced('ZREM', KEYS[3], ids)
  sliced('HDEL', KEYS[1], ids)
  sliced('HDEL', KEYS[2], ids)
  sliced('HDEL', KEYS[4], ids)
  sliced('HDEL', KEYS[5], ids)
end
return #ids
