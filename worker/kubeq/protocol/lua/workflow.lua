#!lua
-- workflow: submit every step of one workflow atomically: all or nothing.
-- Flags: none (may write; refused whole when Redis is out of memory).
-- KEYS[1] tasks HASH  KEYS[2] meta HASH  KEYS[3] counters HASH  KEYS[4] results HASH
-- KEYS[5] wake LIST  KEYS[6] flow HASH  KEYS[7] flow_wait HASH  KEYS[8] flows HASH
-- KEYS[9 .. 8+L] ready LIST of each level, in level order
-- KEYS[9+L .. 8+2L] delayed ZSET of each level, in level order (for maxBacklog)
-- ARGV[1] L  ARGV[2] workflow id  ARGV[3] N steps (at most MAX_BATCH)  ARGV[4] on-failure step
-- id or ''  ARGV[5] steps that must complete (all but the on-failure one)  ARGV[6] wake cap
-- ARGV[7] max_backlog (0: unbounded; every step counts, waiting or not)
-- then N tuples of 6: id, level index, meta, task record JSON, flow entry
--   "<workflow>|<level index>|<inputs>|<succ>/<i> ...", inputs it waits for (0: runs now)
-- Returns: N ids, or, with nothing written, "WORKFLOWEXISTS <id>" | "TASKEXISTS <id>" |
--   "QUEUEFULL <backlog> <max> <new>".
local L = tonumber(ARGV[1])
local wf = ARGV[2]
local n = tonumber(ARGV[3])
local T = 6
check_batch(n, 'workflow')
if redis.call('HEXISTS', KEYS[8], wf) == 1 then
  return redis.error_reply('WORKFLOWEXISTS ' .. wf)
end
local max_backlog = tonumber(ARGV[7])
if max_backlog > 0 then
  local backlog = 0
  for lv = 1, L do
    backlog = backlog + redis.call('LLEN', KEYS[8 + lv]) + redis.call('ZCARD', KEYS[8 + L + lv])
  end
  if backlog + n > max_backlog then
    return redis.error_reply('QUEUEFULL ' .. backlog .. ' ' .. max_backlog .. ' ' .. n)
  end
end
local records, metas, flows, waits, ready, ids = {}, {}, {}, {}, {}, {}
for i = 0, n - 1 do
  local b = 8 + i * T
  local id, level, wait = ARGV[b], tonumber(ARGV[b + 1]), tonumber(ARGV[b + 5])
  if not level or level < 1 or level > L or not wait or wait < 0 then
    return redis.error_reply('BADSUBMIT step ' .. id .. ': level ' .. ARGV[b + 1] ..
      ', inputs ' .. ARGV[b + 5])
  end
  if redis.call('HEXISTS', KEYS[1], id) == 1 or redis.call('HEXISTS', KEYS[4], id) == 1 then
    return redis.error_reply('TASKEXISTS ' .. id)
  end
  ids[#ids + 1] = id
  records[#records + 1] = id
  records[#records + 1] = ARGV[b + 3]
  metas[#metas + 1] = id
  metas[#metas + 1] = ARGV[b + 2]
  flows[#flows + 1] = id
  flows[#flows + 1] = ARGV[b + 4]
  if wait > 0 then
    waits[#waits + 1] = id
    waits[#waits + 1] = wait
  else
    ready[level] = ready[level] or {}
    table.insert(ready[level], id)
  end
end

-- Write.
sliced('HSET', KEYS[1], records)
sliced('HSET', KEYS[2], metas)
sliced('HSET', KEYS[6], flows)
if #waits > 0 then sliced('HSET', KEYS[7], waits) end
redis.call('HSET', KEYS[8], wf, 'running|' .. ARGV[5] .. '|' .. ARGV[4], wf .. '/steps',
  table.concat(ids, ' '))
local woken = 0
for level, r in pairs(ready) do
  sliced('RPUSH', KEYS[8 + level], r)
  woken = woken + #r
end
local cap = tonumber(ARGV[6])
for _ = 1, math.min(woken, cap) do redis.call('RPUSH', KEYS[5], '1') end
redis.call('LTRIM', KEYS[5], -cap, -1)
redis.call('HINCRBY', KEYS[3], 'submitted', n)
return ids
