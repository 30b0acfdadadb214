#!lua flags=allow-oom
-- reap: return tasks whose lease expired (their worker died or stalled), drop expired
-- results and deregister silent workers. Safe to run from many workers at once: every
-- step re-reads the state it acts on inside this one atomic script.
-- Flags: allow-oom. It moves ids between structures and frees expired results; refusing
-- it under maxmemory would strand expired leases and keep memory full.
-- KEYS[1] tasks HASH  KEYS[2] attempts HASH  KEYS[3] holders HASH  KEYS[4] counters HASH
-- KEYS[5] cancel SET  KEYS[6] dead ZSET  KEYS[7] dead_info HASH  KEYS[8] wake LIST
-- KEYS[9] workers ZSET  KEYS[10] worker_info HASH  KEYS[11] results HASH
-- KEYS[12] results_expiry ZSET  KEYS[13] meta HASH
-- KEYS[14 .. 13+2L] two keys per level, in level order: ready LIST, leases ZSET
-- KEYS[14+2L .. 17+2L] flow HASH, flow_wait HASH, flows HASH, flows_expiry ZSET (a step
--   dead-lettered or cancelled here fails its workflow, as in settle)
-- KEYS[18+2L] progress HASH (the expired attempt's progress goes with its lease)
-- ARGV[1] now_ms (0: Redis TIME)  ARGV[2] L  ARGV[3] limit (expired leases in all, and
-- expired results; at most MAX_BATCH)  ARGV[4] done channel  ARGV[5] result TTL ms
-- ARGV[6] worker TTL ms  ARGV[7] the queue's max attempts (for a task without meta)
-- ARGV[8] dead-letter retention ms
-- Returns: {requeued ids, dead-lettered ids, cancelled ids, number of results expired,
--           1 when the limit was reached (call again: more may be waiting), else 0}
local now = clock(ARGV[1])
local L = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local default_max = tonumber(ARGV[7])
check_batch(limit, 'reap')
local requeued, dead, cancelled = {}, {}, {}
local events = {}
local seen = 0
for lv = 1, L do
  local ready, leases = KEYS[12 + lv * 2], KEYS[13 + lv * 2]
  if seen >= limit then break end
  local expired = redis.call('ZRANGEBYSCORE', leases, '-inf', now, 'LIMIT', 0, limit - seen)
  seen = seen + #expired
  for _, id in ipairs(expired) do
    local holder = redis.call('HGET', KEYS[3], id) or ''
    local worker = string.match(holder, '^[^|]*|(.*)|[^|]*$') or ''
    local record = redis.call('HGET', KEYS[1], id)
    local attempts = tonumber(redis.call('HGET', KEYS[2], id) or '0')
    local m = meta_of(redis.call('HGET', KEYS[13], id))
    local max_attempts = (m and m.max_attempts) or default_max
    redis.call('ZREM', leases, id)
    redis.call('HDEL', KEYS[3], id)
    redis.call('HDEL', KEYS[18 + 2 * L], id)
    if not record then
      -- Nothing left to run (defensive: a foreign writer removed the record).
      redis.call('HDEL', KEYS[2], id)
      redis.call('HDEL', KEYS[13], id)
    elseif redis.call('SREM', KEYS[5], id) == 1 then
      -- Cancelled while running, then its worker vanished: the cancel wins.
      local outcome = cjson.encode({status = 'cancelled', finished_at = now, attempts = attempts,
        worker = worker, reason = 'cancelled; its worker stopped heartbeating'})
      redis.call('HSET', KEYS[11], id, '{"task":' .. record .. ',"outcome":' .. outcome .. '}')
      redis.call('ZADD', KEYS[12], now + tonumber(ARGV[5]), id)
      redis.call('HDEL', KEYS[1], id)
      redis.call('HDEL', KEYS[2], id)
      redis.call('HDEL', KEYS[13], id)
      cancelled[#cancelled + 1] = id
      events[#events + 1] = {id, false, outcome, 'cancelled'}
    elseif attempts >= max_attempts then
      -- A poison task (or an unlucky one) whose every attempt lost its worker.
      local outcome = cjson.encode({status = 'dead', finished_at = now, attempts = attempts,
        worker = worker, reason = 'lease_expired',
        error = {type = 'LeaseExpired', message = 'lease expired on attempt ' .. attempts ..
          ' of ' .. max_attempts .. ': the worker died or stalled'}})
      redis.call('ZADD', KEYS[6], now, id)
      redis.call('HSET', KEYS[7], id, outcome)
      dead[#dead + 1] = id
      events[#events + 1] = {id, false, outcome, 'dead'}
    else
      -- Front of the line: it has waited longest. The attempt stays counted.
      redis.call('LPUSH', ready, id)
      requeued[#requeued + 1] = id
    end
  end
end
if #requeued > 0 then
  redis.call('HINCRBY', KEYS[4], 'reaped', #requeued)
  redis.call('RPUSH', KEYS[8], '1')
  redis.call('LTRIM', KEYS[8], -64, -1)
end
if #dead > 0 then
  redis.call('HINCRBY', KEYS[4], 'dead', #dead)
  prune_dead(KEYS[6], KEYS[7], KEYS[1], KEYS[2], KEYS[13], now - tonumber(ARGV[8]),
    #dead + PRUNE_EXTRA)
end
if #cancelled > 0 then
  redis.call('HINCRBY', KEYS[4], 'cancelled', #cancelled)
end
local F = {flow = KEYS[14 + 2 * L], wait = KEYS[15 + 2 * L], flows = KEYS[16 + 2 * L],
  expiry_f = KEYS[17 + 2 * L], tasks = KEYS[1], meta = KEYS[13], attempts = KEYS[2],
  results = KEYS[11], expiry = KEYS[12], counters = KEYS[4], ready = {}, ttl = tonumber(ARGV[5])}
for lv = 1, L do F.ready[lv] = KEYS[12 + lv * 2] end
local flow_writes, flow_cancelled = flow_plan(F, events, now)
flow_apply(flow_writes)
local gone = {}
for _, id in ipairs(flow_cancelled) do gone[#gone + 1] = id end
for _, id in ipairs(dead) do gone[#gone + 1] = id end
for _, id in ipairs(cancelled) do gone[#gone + 1] = id end
if #gone > 0 then
  redis.call('PUBLISH', ARGV[4], table.concat(gone, ' '))
end
local expired_results = prune_results(KEYS[11], KEYS[12], now, limit)
local stale = redis.call('ZRANGEBYSCORE', KEYS[9], '-inf', now - tonumber(ARGV[6]), 'LIMIT', 0, limit)
if #stale > 0 then
  sliced('ZREM', KEYS[9], stale)
  sliced('HDEL', KEYS[10], stale)
end
local more = 0
if seen >= limit or expired_results >= limit then more = 1 end
return {requeued, dead, cancelled, expired_results, more}
