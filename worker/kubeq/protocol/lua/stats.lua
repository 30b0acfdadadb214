#!lua flags=no-writes
-- stats: the queue's backlog per priority level and its totals, in one round trip.
-- Flags: no-writes (run with EVALSHA_RO: works for a read-only ACL user and on replicas).
-- KEYS[1] meta HASH  KEYS[2] dead ZSET  KEYS[3] workers ZSET  KEYS[4] counters HASH
-- KEYS[5 .. 4+3L] three keys per level, in level order: ready LIST, delayed ZSET, leases ZSET
-- KEYS[5+3L] the queue's paused STRING
-- ARGV[1] now_ms (0: Redis TIME)  ARGV[2] L
-- Returns: {dead, workers, counters (flat field/value list),
--           then per level: ready, delayed (not yet due), due, in-flight,
--           enqueued-at ms of the oldest ready task (-1 when none)}, now_ms,
--           the paused JSON or false}
local now = clock(ARGV[1])
local L = tonumber(ARGV[2])
local out = {redis.call('ZCARD', KEYS[2]), redis.call('ZCARD', KEYS[3]), redis.call('HGETALL', KEYS[4])}
for lv = 0, L - 1 do
  local ready, delayed, leases = KEYS[5 + lv * 3], KEYS[6 + lv * 3], KEYS[7 + lv * 3]
  local total_delayed = redis.call('ZCARD', delayed)
  local due = redis.call('ZCOUNT', delayed, '-inf', now)
  local oldest = -1
  local head = redis.call('LINDEX', ready, 0)
  if head then
    local m = meta_of(redis.call('HGET', KEYS[1], head))
    if m then oldest = m.enqueued end
  end
  -- The oldest due delayed task has waited since its due time, longer than the list's head.
  local first_due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'WITHSCORES', 'LIMIT', 0, 1)
  if #first_due > 0 and (oldest < 0 or tonumber(first_due[2]) < oldest) then
    oldest = tonumber(first_due[2])
  end
  out[#out + 1] = redis.call('LLEN', ready)
  out[#out + 1] = total_delayed - due
  out[#out + 1] = due
  out[#out + 1] = redis.call('ZCARD', leases)
  out[#out + 1] = oldest
end
out[#out + 1] = now
out[#out + 1] = redis.call('GET', KEYS[5 + 3 * L])
return out
