#!lua
-- cancel: a pending task is removed at once; a running one is flagged, and its worker learns
-- of it with its next heartbeat (the flag stays until the task ends: see settle).
-- Flags: none (may write; refused whole when Redis is out of memory).
-- KEYS[1] tasks HASH  KEYS[2] attempts HASH  KEYS[3] holders HASH  KEYS[4] cancel SET
-- KEYS[5] counters HASH  KEYS[6] dead ZSET  KEYS[7] results HASH  KEYS[8] results_expiry ZSET
-- KEYS[9] meta HASH
-- KEYS[10 .. 9+2L] two keys per level, in level order: ready LIST, delayed ZSET
-- KEYS[10+2L .. 13+2L] flow HASH, flow_wait HASH, flows HASH, flows_expiry ZSET: a step of a
--   workflow waiting for its inputs is cancelled too, and a cancelled step fails its workflow
-- ARGV[1] now_ms (0: Redis TIME)  ARGV[2] id  ARGV[3] result TTL ms  ARGV[4] done channel
-- ARGV[5] L  ARGV[6 .. 5+L] level names, in level order
-- Returns: 'cancelled' | 'requested' (running) | 'finished' | 'dead' | 'unknown'
local now = clock(ARGV[1])
local id = ARGV[2]
local L = tonumber(ARGV[5])
local record = redis.call('HGET', KEYS[1], id)
if not record then
  if redis.call('HEXISTS', KEYS[7], id) == 1 then
    return 'finished'
  end
  return 'unknown'
end
if redis.call('ZSCORE', KEYS[6], id) then
  return 'dead'
end
if redis.call('HEXISTS', KEYS[3], id) == 1 then
  redis.call('SADD', KEYS[4], id)
  return 'requested'
end
local F = {flow = KEYS[10 + 2 * L], wait = KEYS[11 + 2 * L], flows = KEYS[12 + 2 * L],
  expiry_f = KEYS[13 + 2 * L], tasks = KEYS[1], meta = KEYS[9], attempts = KEYS[2],
  results = KEYS[7], expiry = KEYS[8], counters = KEYS[5], ready = {}, ttl = tonumber(ARGV[3])}
for lv = 1, L do F.ready[lv] = KEYS[8 + lv * 2] end
local m = meta_of(redis.call('HGET', KEYS[9], id))
-- Find the structure that holds it (its meta's level; every level when it has no meta).
local found = nil
for lv = 1, L do
  if not m or ARGV[5 + lv] == m.level then
    if redis.call('ZSCORE', KEYS[9 + lv * 2], id) then
      found = {'ZREM', KEYS[9 + lv * 2], id}
    elseif redis.call('LPOS', KEYS[8 + lv * 2], id) then
      found = {'LREM', KEYS[8 + lv * 2], 1, id}
    end
    if found then break end
  end
end
if not found and (tonumber(redis.call('HGET', F.wait, id) or '0') > 0) then
  -- A workflow step still waiting for its inputs: it lives only in flow_wait.
  -- Failing its workflow cancels every waiting step, this one included.
  local fw, fc = flow_plan(F, {{id, false, '{"status":"cancelled"}', 'cancelled'}}, now)
  local mine = false
  for _, c in ipairs(fc) do mine = mine or c == id end
  if not mine then
    flow_cancel_waiting(F, fw, id, now, 'cancelled before it ran')
    fc[#fc + 1] = id
  end
  flow_apply(fw)
  redis.call('PUBLISH', ARGV[4], table.concat(fc, ' '))
  return 'cancelled'
end
if not found then
  -- The record exists but sits in no structure: only a foreign writer can cause that.
  return redis.error_reply('PROTOCOL task ' .. id .. ' has a record but is in no queue structure')
end
local attempts = tonumber(redis.call('HGET', KEYS[2], id) or '0')
local outcome = cjson.encode({status = 'cancelled', finished_at = now, attempts = attempts,
  reason = 'cancelled before it ran'})
local flow_writes, flow_cancelled = flow_plan(F, {{id, false, outcome, 'cancelled'}}, now)
redis.call(unpack(found))
redis.call('HSET', KEYS[7], id, '{"task":' .. record .. ',"outcome":' .. outcome .. '}')
redis.call('ZADD', KEYS[8], now + tonumber(ARGV[3]), id)
redis.call('HDEL', KEYS[1], id)
redis.call('HDEL', KEYS[2], id)
redis.call('HDEL', KEYS[9], id)
redis.call('HINCRBY', KEYS[5], 'cancelled', 1)
flow_apply(flow_writes)
flow_cancelled[#flow_cancelled + 1] = id
redis.call('PUBLISH', ARGV[4], table.concat(flow_cancelled, ' '))
prune_results(KEYS[7], KEYS[8], now, 1 + PRUNE_EXTRA)
return 'cancelled'
