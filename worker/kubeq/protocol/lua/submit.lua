#!lua
-- submit: enqueue a chunk of tasks atomically: all or nothing.
-- Flags: none (may write; refused whole when Redis is out of memory).
-- KEYS[1] tasks HASH  KEYS[2] wake LIST  KEYS[3] counters HASH  KEYS[4] meta HASH
-- KEYS[5] seq counter  KEYS[6] results HASH
-- KEYS[7 .. 6+L]        ready LIST of each level, in level order
-- KEYS[7+L .. 6+2L]     delayed ZSET of each level, in level order
-- KEYS[7+2L ..]         idempotency keys, referenced by index from the task tuples
-- KEYS[#KEYS]          type_counters HASH (last, after the idempotency keys)
-- ARGV[1] now_ms (0: Redis TIME)  ARGV[2] max_backlog (0: unbounded)  ARGV[3] wake cap
-- ARGV[4] idempotency TTL ms  ARGV[5] L (levels)  ARGV[6] N (tasks, at most MAX_BATCH)
-- ARGV[7] 1 when some task has an idempotency key or a caller-chosen id (else no checks)
-- then N tuples of T: id, level index (1-based), delay ms, eta ms (0: none; absolute),
--   meta "<level>|<max attempts>|<enqueued ms>" (the producer's clock: informational, for
--   stats' oldest-task age), task record JSON, and only with checks (T = 8, else T = 6):
--   idempotency key index (0: none), 1 when the caller chose the id (checked to be new)
--   or 0 (128 random bits: not checked)
-- then K (distinct task types in the chunk), K type names, and, when K > 1, N type
--   indexes (1-based), one per tuple: fresh tasks are counted per type (`submitted`) in
--   type_counters
-- Returns: N ids (the first task's id on an idempotency hit), or, with nothing written,
--   the error "QUEUEFULL <backlog> <max> <new>" or "TASKEXISTS <id>".
local now = clock(ARGV[1])
local max_backlog = tonumber(ARGV[2])
local wake_cap = tonumber(ARGV[3])
local idem_ttl = ARGV[4]
local L = tonumber(ARGV[5])
local n = tonumber(ARGV[6])
local idem_base = 6 + 2 * L
-- Read and decide; nothing is written before every check passed.
local checks = ARGV[7] == '1'
local T = checks and 8 or 6  -- plain chunks carry no idempotency index or chosen flag
check_batch(n, 'submit')

local owner = {}     -- idempotency key index -> the id that owns it
local new_owner = {} -- idempotency key index -> true when this chunk takes the key
local ids, fresh = {}, {}
for i = 0, n - 1 do
  local base = 8 + i * T
  local id = ARGV[base]
  local idem = checks and tonumber(ARGV[base + 6]) or 0
  local is_fresh = true
  if idem > 0 then
    local o = owner[idem]
    if o == nil then
      o = redis.call('GET', KEYS[idem_base + idem])
      if o then owner[idem] = o end
    end
    if o then
      id = o
      is_fresh = false
    else
      owner[idem] = id
      new_owner[idem] = true
    end
  end
  if is_fresh then
    -- A caller-chosen id must be new: anywhere (pending, running, dead, finished).
    if checks and ARGV[base + 7] == '1'
      and (redis.call('HEXISTS', KEYS[1], id) == 1 or redis.call('HEXISTS', KEYS[6], id) == 1) then
      return redis.error_reply('TASKEXISTS ' .. id)
    end
    fresh[#fresh + 1] = i
  end
  ids[#ids + 1] = id
end
if max_backlog > 0 and #fresh > 0 then
  local backlog = 0
  for lv = 1, L do
    backlog = backlog + redis.call('LLEN', KEYS[6 + lv]) + redis.call('ZCARD', KEYS[6 + L + lv])
  end
  if backlog + #fresh > max_backlog then
    return redis.error_reply('QUEUEFULL ' .. backlog .. ' ' .. max_backlog .. ' ' .. #fresh)
  end
end
if #fresh == 0 then
  return ids
end

-- Build every argument list (still no write; a malformed tuple is refused here). A task
-- ready now keeps its meta as sent (the list keeps its order); one due later gets a
-- sequence number, so tasks due in the same ms are promoted in submission order.
local records, metas = {}, {}
local ready_ids, delayed_args = {}, {}
local ready_now = 0
local sequenced = {}  -- {position in metas, rank among fresh tasks}
for k, i in ipairs(fresh) do
  local base = 8 + i * T
  local id = ARGV[base]
  local level, delay, eta = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3])
  if not level or level < 1 or level > L or not delay or not eta then
    return redis.error_reply('BADSUBMIT task ' .. id .. ': level ' .. ARGV[base + 1] ..
      ', delay ' .. ARGV[base + 2] .. ', eta ' .. ARGV[base + 3])
  end
  local due = now + delay
  if eta > 0 then due = math.max(now, eta) end
  records[#records + 1] = id
  records[#records + 1] = ARGV[base + 5]
  metas[#metas + 1] = id
  metas[#metas + 1] = ARGV[base + 4]
  if due > now then
    sequenced[#sequenced + 1] = {#metas, k}
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
end

-- Write: one command per structure (per slice), not per task.
if #sequenced > 0 then
  local seq = redis.call('INCRBY', KEYS[5], #fresh) - #fresh
  for _, e in ipairs(sequenced) do
    metas[e[1]] = metas[e[1]] .. '|' .. tostring(seq + e[2])
  end
end
for idem, _ in pairs(new_owner) do
  redis.call('SET', KEYS[idem_base + idem], owner[idem], 'PX', idem_ttl)
end
sliced('HSET', KEYS[1], records)
sliced('HSET', KEYS[4], metas)
for level, r in pairs(ready_ids) do
  sliced('RPUSH', KEYS[6 + level], r)
end
for level, d in pairs(delayed_args) do
  sliced('ZADD', KEYS[6 + L + level], d)
end
if ready_now > 0 then
  local tokens = 0
  for _ = 1, math.min(ready_now, wake_cap) do
    tokens = redis.call('RPUSH', KEYS[2], '1')
  end
  if tokens > wake_cap then  -- trimmed only when over the cap: one call less per submit
    redis.call('LTRIM', KEYS[2], -wake_cap, -1)
  end
end
redis.call('HINCRBY', KEYS[3], 'submitted', #fresh)
local types_at = 8 + n * T
local k_types = tonumber(ARGV[types_at]) or 0
if k_types == 1 then  -- one type: every fresh task is of it, no per-task index sent
  count_type(KEYS[#KEYS], ARGV[types_at + 1], 'submitted', #fresh)
elseif k_types > 1 then
  local per_type = {}
  for _, i in ipairs(fresh) do
    local t = tonumber(ARGV[types_at + k_types + 1 + i])
    if t then per_type[t] = (per_type[t] or 0) + 1 end
  end
  for t, count in pairs(per_type) do
    count_type(KEYS[#KEYS], ARGV[types_at + t], 'submitted', count)
  end
end
return ids
