#!lua
-- workflow_cancel: cancel a running workflow: its waiting and pending steps end cancelled at
-- once, its running ones are flagged (as cancel does), its on-failure step never runs.
-- Flags: none (may write; refused whole when Redis is out of memory).
-- KEYS[1] tasks HASH  KEYS[2] attempts HASH  KEYS[3] holders HASH  KEYS[4] cancel SET
-- KEYS[5] counters HASH  KEYS[6] results HASH  KEYS[7] results_expiry ZSET  KEYS[8] meta HASH
-- KEYS[9] flow HASH  KEYS[10] flow_wait HASH  KEYS[11] flows HASH  KEYS[12] flows_expiry ZSET
-- KEYS[13 .. 12+2L] two keys per level, in level order: ready LIST, delayed ZSET
-- ARGV[1] now_ms (0: Redis TIME)  ARGV[2] workflow id  ARGV[3] result TTL ms
-- ARGV[4] done channel  ARGV[5] L
-- Returns: {state before ('unknown' when there is no such workflow), cancelled ids,
--           ids whose running attempt was asked to stop}
local now = clock(ARGV[1])
local wf = ARGV[2]
local L = tonumber(ARGV[5])
local F = {flow = KEYS[9], wait = KEYS[10], flows = KEYS[11], expiry_f = KEYS[12],
  tasks = KEYS[1], meta = KEYS[8], attempts = KEYS[2], results = KEYS[6], expiry = KEYS[7],
  counters = KEYS[5], ready = {}, ttl = tonumber(ARGV[3])}
local raw = redis.call('HGET', F.flows, wf)
if not raw then return {'unknown', {}, {}} end
local status, left, fail = string.match(raw, '^(%a+)|(%d+)|(.*)$')
if status ~= 'running' then return {status or 'unknown', {}, {}} end
local steps = redis.call('HGET', F.flows, wf .. '/steps') or ''
local w, cancelled, flagged = {}, {}, {}
local reason = 'workflow ' .. wf .. ' cancelled'
for id in string.gmatch(steps, '[^ ]+') do
  local record = redis.call('HGET', KEYS[1], id)
  local info = flow_info(redis.call('HGET', F.flow, id))
  if record and info then
    if tonumber(redis.call('HGET', F.wait, id) or '0') > 0 then
      flow_cancel_waiting(F, w, id, now, reason)
      cancelled[#cancelled + 1] = id
    elseif redis.call('HEXISTS', KEYS[3], id) == 1 then
      w[#w + 1] = {'SADD', KEYS[4], id}
      flagged[#flagged + 1] = id
    else
      local lv = info.level
      local found = nil
      if lv >= 1 and lv <= L then
        if redis.call('ZSCORE', KEYS[14 + (lv - 1) * 2], id) then
          found = {'ZREM', KEYS[14 + (lv - 1) * 2], id}
        elseif redis.call('LPOS', KEYS[13 + (lv - 1) * 2], id) then
          found = {'LREM', KEYS[13 + (lv - 1) * 2], 1, id}
        end
      end
      if found then
        local attempts = tonumber(redis.call('HGET', KEYS[2], id) or '0')
        local outcome = cjson.encode({status = 'cancelled', finished_at = now,
          attempts = attempts, reason = reason})
        w[#w + 1] = found
        w[#w + 1] = {'HSET', KEYS[6], id, '{"task":' .. record .. ',"outcome":' .. outcome .. '}'}
        w[#w + 1] = {'ZADD', KEYS[7], now + F.ttl, id}
        w[#w + 1] = {'HDEL', KEYS[1], id}
        w[#w + 1] = {'HDEL', KEYS[2], id}
        w[#w + 1] = {'HDEL', KEYS[8], id}
        w[#w + 1] = {'HDEL', F.flow, id}
        w[#w + 1] = {'HINCRBY', KEYS[5], 'cancelled', 1}
        cancelled[#cancelled + 1] = id
      end
    end
  end
end
w[#w + 1] = {'HSET', F.flows, wf, 'cancelled|' .. left .. '|' .. fail}
w[#w + 1] = {'ZADD', F.expiry_f, now + F.ttl, wf}
flow_apply(w)
if #cancelled > 0 then
  redis.call('PUBLISH', ARGV[4], table.concat(cancelled, ' '))
end
return {'running', cancelled, flagged}
