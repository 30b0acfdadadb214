#!lua
-- settle: end the leases of a batch of tasks, each only if its lease is still this holder's.
-- Flags: none (may write; refused whole when Redis is out of memory: the worker keeps the
-- outcome and retries, its heartbeat (allow-oom) keeps the lease meanwhile).
-- KEYS[1] tasks HASH  KEYS[2] attempts HASH  KEYS[3] holders HASH  KEYS[4] counters HASH
-- KEYS[5] cancel SET  KEYS[6] dead ZSET  KEYS[7] dead_info HASH  KEYS[8] wake LIST
-- KEYS[9] meta HASH  KEYS[10] results HASH  KEYS[11] results_expiry ZSET
-- KEYS[12 .. 11+3L] three keys per level, in level order: ready LIST, delayed ZSET, leases ZSET
-- KEYS[12+3L .. 15+3L] flow HASH, flow_wait HASH, flows HASH, flows_expiry ZSET (workflows:
--   see flow_plan in _lib.lua; a step's end moves its workflow on in this same script)
-- KEYS[16+3L] progress HASH (an attempt's progress ends with it: deleted for every id applied)
-- ARGV[1] now_ms (0: Redis TIME)  ARGV[2] result TTL ms  ARGV[3] L  ARGV[4] N (at most
-- MAX_BATCH)  ARGV[5] done channel  ARGV[6] dead-letter retention ms
-- then N tuples of 7: id, token, worker id, level index, action, delay ms, outcome JSON
--   action complete|cancel: terminal record {"task":..., "outcome":...} kept for the TTL
--   action retry: back to the level's delayed set, due `delay ms` after the script's now
--   action dead: to the dead-letter set with the outcome (reason, error)
--   action release: back to the FRONT of its ready list with the attempt refunded (drain)
--   A retry or release of a task whose cancel was requested ends it cancelled instead:
--   a cancel sticks until the task is terminal.
-- Fencing: applied only when the holder is exactly "<token>|<worker id>|...".
-- Returns: N integers, 1 applied, 0 refused (the lease was lost meanwhile, or a repeat).
local now = clock(ARGV[1])
local ttl = tonumber(ARGV[2])
local L = tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local retention = tonumber(ARGV[6])
local T = 7
check_batch(n, 'settle')
if n == 0 then return {} end
local results, expiry = KEYS[10], KEYS[11]
local actions = {complete = true, cancel = true, retry = true, dead = true, release = true}

-- Validate and read everything first: no error can follow a write.
local ids = {}
for i = 0, n - 1 do
  local a = 8 + i * T - 1
  local level, action, delay = tonumber(ARGV[a + 3]), ARGV[a + 4], tonumber(ARGV[a + 5])
  if not level or level < 1 or level > L or not actions[action] or not delay or delay < 0 then
    return redis.error_reply('BADSETTLE task ' .. ARGV[a] .. ': level ' .. ARGV[a + 3] ..
      ', action ' .. action .. ', delay ' .. ARGV[a + 5])
  end
  ids[#ids + 1] = ARGV[a]
end
local holders = redis.call('HMGET', KEYS[3], unpack(ids))
-- Cancel flags are rare: look them up only when there are any.
local any_flagged = redis.call('SCARD', KEYS[5]) > 0
local flagged = any_flagged and redis.call('SMISMEMBER', KEYS[5], unpack(ids)) or {}
local applied, seen = {}, {}
local out = {}
for i = 0, n - 1 do
  local a = 8 + i * T - 1
  local id, token, worker = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  local holder = holders[i + 1]
  local prefix = token .. '|' .. worker .. '|'
  if not seen[id] and holder and string.sub(holder, 1, #prefix) == prefix then
    seen[id] = true
    applied[#applied + 1] = i
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
if #applied == 0 then return out end
local done_ids, gone_holders = {}, {}
local finished, sticky = {}, {}
for _, i in ipairs(applied) do
  local a = 8 + i * T - 1
  local action = ARGV[a + 4]
  if (action == 'retry' or action == 'release') and flagged[i + 1] == 1 then
    sticky[#sticky + 1] = ARGV[a]
    finished[#finished + 1] = ARGV[a]
  elseif action == 'complete' or action == 'cancel' then
    finished[#finished + 1] = ARGV[a]
  end
end
local records = {}
local counted = {}
if #finished > 0 then
  local r = redis.call('HMGET', KEYS[1], unpack(finished))
  for j, id in ipairs(finished) do records[id] = r[j] end
end
if #sticky > 0 then
  local c = redis.call('HMGET', KEYS[2], unpack(sticky))
  for j, id in ipairs(sticky) do counted[id] = c[j] end
end

-- Workflow steps among them: decided here, written with the rest.
local F = {flow = KEYS[12 + 3 * L], wait = KEYS[13 + 3 * L], flows = KEYS[14 + 3 * L],
  expiry_f = KEYS[15 + 3 * L], tasks = KEYS[1], meta = KEYS[9], attempts = KEYS[2],
  results = KEYS[10], expiry = KEYS[11], counters = KEYS[4], ready = {}, ttl = ttl}
for lv = 1, L do F.ready[lv] = KEYS[12 + (lv - 1) * 3] end
local events = {}
for _, i in ipairs(applied) do
  local a = 8 + i * T - 1
  local action = ARGV[a + 4]
  if (action == 'retry' or action == 'release') and flagged[i + 1] == 1 then
    events[#events + 1] = {ARGV[a], false, '{"status":"cancelled"}', 'cancelled'}
  elseif action == 'complete' then
    events[#events + 1] = {ARGV[a], true, ARGV[a + 6]}
  elseif action == 'cancel' then
    events[#events + 1] = {ARGV[a], false, ARGV[a + 6], 'cancelled'}
  elseif action == 'dead' then
    events[#events + 1] = {ARGV[a], false, ARGV[a + 6], 'dead'}
  end
end
local flow_writes, flow_cancelled = flow_plan(F, events, now)

-- Write.
local counts = {completed = 0, cancelled = 0, retried = 0, dead = 0, released = 0}
local gone_leases = {}
local result_args, expiry_args, dead_args, dead_info_args = {}, {}, {}, {}
local release_front = {}
local expires = now + ttl
for _, i in ipairs(applied) do
  local a = 8 + i * T - 1
  local id, level, action = ARGV[a], tonumber(ARGV[a + 3]), ARGV[a + 4]
  local lk = 11 + (level - 1) * 3
  gone_holders[#gone_holders + 1] = id
  gone_leases[lk + 3] = gone_leases[lk + 3] or {}
  table.insert(gone_leases[lk + 3], id)
  if (action == 'retry' or action == 'release') and flagged[i + 1] == 1 then
    local outcome = cjson.encode({status = 'cancelled', finished_at = now,
      attempts = tonumber(counted[id] or '0'), worker = ARGV[a + 2],
      reason = 'cancel requested; the attempt ended in ' .. action})
    result_args[#result_args + 1] = id
    result_args[#result_args + 1] = '{"task":' .. (records[id] or 'null') .. ',"outcome":' .. outcome .. '}'
    expiry_args[#expiry_args + 1] = expires
    expiry_args[#expiry_args + 1] = id
    done_ids[#done_ids + 1] = id
    counts.cancelled = counts.cancelled + 1
  elseif action == 'complete' or action == 'cancel' then
    result_args[#result_args + 1] = id
    result_args[#result_args + 1] = '{"task":' .. (records[id] or 'null') .. ',"outcome":' .. ARGV[a + 6] .. '}'
    expiry_args[#expiry_args + 1] = expires
    expiry_args[#expiry_args + 1] = id
    done_ids[#done_ids + 1] = id
    if action == 'complete' then
      counts.completed = counts.completed + 1
    else
      counts.cancelled = counts.cancelled + 1
    end
  elseif action == 'retry' then
    redis.call('ZADD', KEYS[lk + 2], now + tonumber(ARGV[a + 5]), id)
    counts.retried = counts.retried + 1
  elseif action == 'dead' then
    dead_args[#dead_args + 1] = now
    dead_args[#dead_args + 1] = id
    dead_info_args[#dead_info_args + 1] = id
    dead_info_args[#dead_info_args + 1] = ARGV[a + 6]
    done_ids[#done_ids + 1] = id
    counts.dead = counts.dead + 1
  else -- release
    release_front[lk + 1] = release_front[lk + 1] or {}
    table.insert(release_front[lk + 1], id)
    redis.call('HINCRBY', KEYS[2], id, -1)
    counts.released = counts.released + 1
  end
end
local terminal_count = #result_args / 2
if terminal_count > 0 then
  local gone = {}
  for j = 1, #result_args, 2 do gone[#gone + 1] = result_args[j] end
  sliced('HSET', results, result_args)
  sliced('ZADD', expiry, expiry_args)
  sliced('HDEL', KEYS[1], gone)
  sliced('HDEL', KEYS[2], gone)
  sliced('HDEL', KEYS[9], gone)
  prune_results(results, expiry, now, terminal_count + PRUNE_EXTRA)
end
if #dead_args > 0 then
  sliced('ZADD', KEYS[6], dead_args)
  sliced('HSET', KEYS[7], dead_info_args)
  prune_dead(KEYS[6], KEYS[7], KEYS[1], KEYS[2], KEYS[9], now - retention,
    #dead_args / 2 + PRUNE_EXTRA)
end
for key, members in pairs(release_front) do
  -- LPUSH reverses: push the batch reversed so it keeps its order at the front.
  local rev = {}
  for j = #members, 1, -1 do rev[#rev + 1] = members[j] end
  sliced('LPUSH', KEYS[key], rev)
end
sliced('HDEL', KEYS[3], gone_holders)
sliced('HDEL', KEYS[16 + 3 * L], gone_holders)
-- The cancel flag goes only with a terminal ending (the others were turned into one).
if any_flagged then
  sliced('SREM', KEYS[5], gone_holders)
end
for key, members in pairs(gone_leases) do
  sliced('ZREM', KEYS[key], members)
end
if counts.released > 0 then
  for _ = 1, math.min(counts.released, 64) do redis.call('RPUSH', KEYS[8], '1') end
  redis.call('LTRIM', KEYS[8], -64, -1)
end
for name, c in pairs(counts) do
  if c > 0 then
    redis.call('HINCRBY', KEYS[4], name, c)
  end
end
flow_apply(flow_writes)
for _, id in ipairs(flow_cancelled) do done_ids[#done_ids + 1] = id end
if #done_ids > 0 then
  redis.call('PUBLISH', ARGV[5], table.concat(done_ids, ' '))
end
return out
