-- settle: end the leases of a batch of tasks, each only if its fencing token still matches.
-- KEYS[1] tasks HASH  KEYS[2] attempts HASH  KEYS[3] holders HASH  KEYS[4] counters HASH
-- KEYS[5] cancel SET  KEYS[6] dead ZSET  KEYS[7] dead_info HASH  KEYS[8] wake LIST
-- KEYS[9 .. 8+3L] three keys per level, in level order: ready LIST, delayed ZSET, leases ZSET
-- KEYS[9+3L] results HASH  KEYS[10+3L] results_expiry ZSET
-- ARGV[1] now_ms  ARGV[2] result TTL ms  ARGV[3] L  ARGV[4] N  ARGV[5] done channel
-- then N tuples of 6: id, token, level index, action, due ms, outcome JSON
--   action complete|cancel: terminal record {"task":..., "outcome":...} kept for the TTL
--   action retry: back to the level's delayed set, due at `due ms` (attempt stays counted)
--   action dead: to the dead-letter set with the outcome (reason, error)
--   action release: back to the FRONT of its ready list with the attempt refunded (drain)
-- Returns: N integers, 1 applied, 0 refused (stale token: the lease was lost meanwhile).
local now = tonumber(ARGV[1])
local ttl = ARGV[2]
local L = tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local results, expiry = KEYS[9 + 3 * L], KEYS[10 + 3 * L]
local ids = {}
for i = 0, n - 1 do ids[#ids + 1] = ARGV[6 + i * 6] end
if n == 0 then return {} end
-- Reads and writes are batched per structure: a settle of 100 tasks costs a few dozen
-- commands, not several hundred.
local holders = redis.call('HMGET', KEYS[3], unpack(ids))
local out, done, finished, released_holders = {}, {}, {}, {}
local gone_leases = {}
local counts = {complete = 0, cancel = 0, retry = 0, dead = 0, release = 0}
local terminal = {}
for i = 0, n - 1 do
  local a = 6 + i * 6
  local id, token, level, action = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2]), ARGV[a + 3]
  local holder = holders[i + 1]
  if holder and string.sub(holder, 1, #token + 1) == token .. '|' then
    local lk = 8 + (level - 1) * 3
    released_holders[#released_holders + 1] = id
    gone_leases[lk + 3] = gone_leases[lk + 3] or {}
    table.insert(gone_leases[lk + 3], id)
    if action == 'complete' or action == 'cancel' then
      terminal[#terminal + 1] = i
      finished[#finished + 1] = id
      done[#done + 1] = id
    elseif action == 'retry' then
      redis.call('ZADD', KEYS[lk + 2], tonumber(ARGV[a + 4]), id)
    elseif action == 'dead' then
      redis.call('ZADD', KEYS[6], now, id)
      redis.call('HSET', KEYS[7], id, ARGV[a + 5])
      done[#done + 1] = id
    elseif action == 'release' then
      redis.call('LPUSH', KEYS[lk + 1], id)
      redis.call('HINCRBY', KEYS[2], id, -1)
    else
      return redis.error_reply('unknown settle action ' .. action)
    end
    counts[action] = counts[action] + 1
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
if #terminal > 0 then
  local records = redis.call('HMGET', KEYS[1], unpack(finished))
  local result_args, expiry_args = {}, {}
  local expires = now + tonumber(ttl)
  for j, i in ipairs(terminal) do
    result_args[#result_args + 1] = finished[j]
    result_args[#result_args + 1] = '{"task":' .. (records[j] or 'null') .. ',"outcome":' .. ARGV[6 + i * 6 + 5] .. '}'
    expiry_args[#expiry_args + 1] = expires
    expiry_args[#expiry_args + 1] = finished[j]
  end
  redis.call('HSET', results, unpack(result_args))
  redis.call('ZADD', expiry, unpack(expiry_args))
  redis.call('HDEL', KEYS[1], unpack(finished))
  redis.call('HDEL', KEYS[2], unpack(finished))
end
if #released_holders > 0 then
  redis.call('HDEL', KEYS[3], unpack(released_holders))
  if redis.call('SCARD', KEYS[5]) > 0 then
    redis.call('SREM', KEYS[5], unpack(released_holders))
  end
end
for key, members in pairs(gone_leases) do
  redis.call('ZREM', KEYS[key], unpack(members))
end
if counts.release > 0 then
  for _ = 1, math.min(counts.release, 64) do redis.call('RPUSH', KEYS[8], '1') end
  redis.call('LTRIM', KEYS[8], -64, -1)
end
local names = {complete = 'completed', cancel = 'cancelled', retry = 'retried', dead = 'dead', release = 'released'}
for action, c in pairs(counts) do
  if c > 0 then
    redis.call('HINCRBY', KEYS[4], names[action], c)
  end
end
if #done > 0 then
  redis.call('PUBLISH', ARGV[5], table.concat(done, ' '))
end
return out
