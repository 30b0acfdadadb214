#!lua flags=allow-oom
-- heartbeat: extend every lease one worker still holds, in one call; register the worker.
-- Flags: allow-oom. It only rewrites existing lease scores and the worker's registry
-- entry; refusing it under maxmemory would let live leases expire and run tasks twice.
-- KEYS[1] holders HASH  KEYS[2] cancel SET  KEYS[3] workers ZSET  KEYS[4] worker_info HASH
-- KEYS[5 .. 4+L] leases ZSET of each level, in level order
-- ARGV[1] now_ms (0: Redis TIME)  ARGV[2] worker id  ARGV[3] lease ms
-- ARGV[4] worker info JSON  ARGV[5] L  ARGV[6] N (at most MAX_BATCH), then N tuples of 3:
--   id, token, level index (1-based)
-- Returns: {lost ids, cancelled ids}. Lost: this worker no longer holds it (token or holder
-- differ: the lease expired and was reaped or re-claimed); the worker must abandon those
-- handlers. Cancelled: still held, but cancel was requested; the worker stops the handler.
local now = clock(ARGV[1])
local worker = ARGV[2]
local deadline = now + tonumber(ARGV[3])
local L = tonumber(ARGV[5])
local n = tonumber(ARGV[6])
check_batch(n, 'heartbeat')
local lost, cancelled = {}, {}
for i = 0, n - 1 do
  local id, token, level = ARGV[7 + i * 3], ARGV[8 + i * 3], tonumber(ARGV[9 + i * 3])
  local holder = redis.call('HGET', KEYS[1], id)
  local prefix = token .. '|' .. worker .. '|'
  if holder and level and level >= 1 and level <= L and string.sub(holder, 1, #prefix) == prefix then
    redis.call('ZADD', KEYS[4 + level], 'XX', deadline, id)
    if redis.call('SISMEMBER', KEYS[2], id) == 1 then
      cancelled[#cancelled + 1] = id
    end
  else
    lost[#lost + 1] = id
  end
end
redis.call('ZADD', KEYS[3], now, worker)
redis.call('HSET', KEYS[4], worker, ARGV[4])
return {lost, cancelled}
