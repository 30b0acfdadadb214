-- submit: enqueue a chunk of tasks atomically (all or nothing under maxBacklog).
-- KEYS[1]  tasks HASH            KEYS[2] wake LIST        KEYS[3] counters HASH
-- KEYS[4 .. 3+L]        ready LIST of each level, in level order
-- KEYS[4+L .. 3+2L]     delayed ZSET of each level, in level order
-- KEYS[4+2L ..]         idempotency keys, referenced by index from the task tuples
-- ARGV[1] now_ms  ARGV[2] max_backlog (0: unbounded)  ARGV[3] wake cap
-- ARGV[4] idempotency TTL ms  ARGV[5] L (levels)  ARGV[6] N (tasks)
-- then N tuples of 5: id, level index (1-based), due ms (0: ready now),
--                     idempotency key index (0: none), task record JSON
-- Returns: N ids (the first task's id on an idempotency hit),
--          or the error "QUEUEFULL <backlog> <max> <new>" with nothing written.
local now = tonumber(ARGV[1])
local max_backlog = tonumber(ARGV[2])
local wake_cap = tonumber(ARGV[3])
local idem_ttl = ARGV[4]
local L = tonumber(ARGV[5])
local n = tonumber(ARGV[6])
local idem_base = 3 + 2 * L

if max_backlog > 0 then
  local fresh = 0
  for i = 0, n - 1 do
    local idem = tonumber(ARGV[7 + i * 5 + 3])
    if idem == 0 or redis.call('EXISTS', KEYS[idem_base + idem]) == 0 then
      fresh = fresh + 1
    end
  end
  local backlog = 0
  for lv = 1, L do
    backlog = backlog + redis.call('LLEN', KEYS[3 + lv]) + redis.call('ZCARD', KEYS[3 + L + lv])
  end
  if backlog + fresh > max_backlog then
    return redis.error_reply('QUEUEFULL ' .. backlog .. ' ' .. max_backlog .. ' ' .. fresh)
  end
end

local ids = {}
local records = {}
local ready_ids, delayed_args = {}, {}
local ready_now = 0
local added = 0
for i = 0, n - 1 do
  local base = 7 + i * 5
  local id = ARGV[base]
  local level = tonumber(ARGV[base + 1])
  local due = tonumber(ARGV[base + 2])
  local idem = tonumber(ARGV[base + 3])
  local fresh = true
  if idem > 0 then
    local key = KEYS[idem_base + idem]
    if not redis.call('SET', key, id, 'NX', 'PX', idem_ttl) then
      -- An earlier submit (or an earlier task of this chunk) owns the key.
      id = redis.call('GET', key)
      fresh = false
    end
  end
  if fresh then
    records[#records + 1] = id
    records[#records + 1] = ARGV[base + 4]
    if due > now then
      delayed_args[level] = delayed_args[level] or {}
      local d = delayed_args[level]
      d[#d + 1] = due
      d[#d + 1] = id
    else
      ready_ids[level] = ready_ids[level] or {}
      local r = ready_ids[level]
      r[#r + 1] = id
      ready_now = ready_now + 1
    end
    added = added + 1
  end
  ids[#ids + 1] = id
end
-- One command per structure, not per task: the chunk is the unit of work.
if #records > 0 then
  redis.call('HSET', KEYS[1], unpack(records))
end
for level, r in pairs(ready_ids) do
  redis.call('RPUSH', KEYS[3 + level], unpack(r))
end
for level, d in pairs(delayed_args) do
  redis.call('ZADD', KEYS[3 + L + level], unpack(d))
end

if ready_now > 0 then
  local tokens = math.min(ready_now, wake_cap)
  for _ = 1, tokens do
    redis.call('RPUSH', KEYS[2], '1')
  end
  redis.call('LTRIM', KEYS[2], -wake_cap, -1)
end
if added > 0 then
  redis.call('HINCRBY', KEYS[3], 'submitted', added)
end
return ids
