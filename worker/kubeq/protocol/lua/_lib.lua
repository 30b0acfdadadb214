-- Shared helpers: scripts.py splices this file into every script right after its
-- `#!lua` line, so each script stays one self-contained EVALSHA body.
-- Bounds every unpack(): a script never spreads more than MAX_BATCH values onto the Lua
-- stack (equal to kubeq.protocol.ops.MAX_SCRIPT_BATCH; a unit test keeps them equal).
local MAX_BATCH = 1000

-- The script's clock: the caller's ms when it sends one (tests drive time that way),
-- else Redis's own TIME, the one clock every pod shares.
local function clock(arg)
  local t = tonumber(arg)
  if t and t > 0 then return t end
  local now = redis.call('TIME')
  return tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
end

-- `cmd key item...` over slices of at most MAX_BATCH items (items come in pairs for
-- HSET/ZADD, and MAX_BATCH is even, so a pair is never split).
local function sliced(cmd, key, items)
  for i = 1, #items, MAX_BATCH do
    redis.call(cmd, key, unpack(items, i, math.min(i + MAX_BATCH - 1, #items)))
  end
end

-- A task's meta field "<level name>|<max attempts>|<enqueued ms>[|<submit sequence>]"
-- (the sequence only for tasks submitted with a delay or ETA), or nil. Scripts read this
-- instead of the task record: Lua never decodes user data.
local function meta_of(raw)
  if not raw then return nil end
  local level, max_attempts, enqueued, seq = string.match(raw, '^([^|]+)|(%d+)|(%-?%d+)|?(%d*)$')
  if not level then return nil end
  return {level = level, max_attempts = tonumber(max_attempts), enqueued = tonumber(enqueued),
    seq = tonumber(seq) or 0}
end

-- Refuses a batch larger than MAX_BATCH before anything is written.
local function check_batch(n, what)
  if n == nil or n < 0 or n > MAX_BATCH then
    error({err = 'BADBATCH ' .. what .. ' size ' .. tostring(n) .. ' is outside 0..' .. MAX_BATCH})
  end
end

-- Drop up to `limit` terminal records whose TTL passed. Returns how many.
local function prune_results(results, expiry, now, limit)
  local old = redis.call('ZRANGEBYSCORE', expiry, '-inf', now, 'LIMIT', 0, limit)
  if #old > 0 then
    sliced('HDEL', results, old)
    sliced('ZREM', expiry, old)
  end
  return #old
end

-- Drop up to `limit` dead letters older than `cutoff` ms, with everything they own.
local function prune_dead(dead, dead_info, tasks, attempts, meta, cutoff, limit)
  local old = redis.call('ZRANGEBYSCORE', dead, '-inf', cutoff, 'LIMIT', 0, limit)
  if #old > 0 then
    sliced('ZREM', dead, old)
    sliced('HDEL', dead_info, old)
    sliced('HDEL', tasks, old)
    sliced('HDEL', attempts, old)
    sliced('HDEL', meta, old)
  end
  return #old
end

-- Expiry keeps pace with completion: whoever adds k terminal records prunes up to
-- k + PRUNE_EXTRA expired ones.
local PRUNE_EXTRA = 16

-- Per-task-type counters: HASH field "<type>|<counter>" -> total. At most TYPE_FIELDS
-- fields: a new type beyond that counts under "(other)", so producers inventing types can
-- never grow the hash (or a dashboard's table) without bound.
local TYPE_FIELDS = 1000
local function count_type(key, task_type, counter, n)
  local field = task_type .. '|' .. counter
  if redis.call('HEXISTS', key, field) == 0 and redis.call('HLEN', key) >= TYPE_FIELDS then
    field = '(other)|' .. counter
  end
  redis.call('HINCRBY', key, field, n)
end

-- Workflows (see kubeq.protocol.workflow). Four keys under the queue's hash tag:
--   flow        HASH step id -> "<workflow>|<level index>|<inputs>|<succ>/<i> <succ>/<i> ..."
--   flow_wait   HASH waiting step id -> inputs still missing; "<step>/<i>" -> input i (an
--               outcome JSON) received so far
--   flows       HASH workflow -> "<running|completed|failed|cancelled>|<steps left>|<on-failure
--               step or empty>"; "<workflow>/steps" -> its step ids, space separated
--   flows_expiry ZSET workflow -> ms when its state may be dropped (the result TTL)
-- F: {flow, wait, flows, expiry_f, tasks, meta, attempts, results, expiry, counters,
--     ready = {ready LIST key by level index}, ttl = result TTL ms}.

local function flow_info(raw)
  if not raw then return nil end
  local wf, lvl, nin, succs = string.match(raw, '^([^|]+)|(%d+)|(%d+)|(.*)$')
  if not wf then return nil end
  return {wf = wf, level = tonumber(lvl), inputs = tonumber(nin), succs = succs}
end

-- A waiting step's cancellation, as writes appended to w (reads first: its record).
local function flow_cancel_waiting(F, w, id, now, reason)
  local record = redis.call('HGET', F.tasks, id) or 'null'
  local info = flow_info(redis.call('HGET', F.flow, id))
  local outcome = cjson.encode({status = 'cancelled', finished_at = now, attempts = 0,
    reason = reason})
  w[#w + 1] = {'HSET', F.results, id, '{"task":' .. record .. ',"outcome":' .. outcome .. '}'}
  w[#w + 1] = {'ZADD', F.expiry, now + F.ttl, id}
  w[#w + 1] = {'HDEL', F.tasks, id}
  w[#w + 1] = {'HDEL', F.meta, id}
  w[#w + 1] = {'HDEL', F.flow, id}
  w[#w + 1] = {'HDEL', F.wait, id}
  for i = 1, (info and info.inputs or 0) do
    w[#w + 1] = {'HDEL', F.wait, id .. '/' .. i}
  end
  w[#w + 1] = {'HINCRBY', F.counters, 'cancelled', 1}
end

-- Drops the state of up to `limit` workflows that ended more than a result TTL ago.
local function flow_prune(F, w, now, limit)
  local old = redis.call('ZRANGEBYSCORE', F.expiry_f, '-inf', now, 'LIMIT', 0, limit)
  for _, wf in ipairs(old) do
    w[#w + 1] = {'HDEL', F.flows, wf, wf .. '/steps'}
    w[#w + 1] = {'ZREM', F.expiry_f, wf}
  end
end

-- What the end of some steps does to their workflows: a completion hands its outcome to
-- each successor and releases (to its ready list) the one whose last input arrived; a
-- failure (dead, cancelled) fails the workflow once: its on-failure step is released with
-- that outcome and its waiting steps are cancelled. Reads only; returns the writes (a list
-- of commands) and the ids it cancelled, for the caller's write phase. Each event is
-- {id, true when completed, outcome JSON}; every caller applies an event once (fencing),
-- so each input is counted once and each release happens once.
local function flow_plan(F, events, now)
  local w, cancelled = {}, {}
  if #events == 0 then return w, cancelled end
  if redis.call('EXISTS', F.flow) == 0 then
    -- No step anywhere: still drop the state of workflows that ended long ago.
    flow_prune(F, w, now, 16)
    return w, cancelled
  end
  local ids = {}
  for i, e in ipairs(events) do ids[i] = e[1] end
  local infos = redis.call('HMGET', F.flow, unpack(ids))
  local wfs, counts, inputs, dirty = {}, {}, {}, {}
  local function wf_of(wf)
    local s = wfs[wf]
    if s == nil then
      local status, left, fail = string.match(redis.call('HGET', F.flows, wf) or '',
        '^(%a+)|(%d+)|(.*)$')
      s = {status = status or 'gone', left = tonumber(left) or 0, fail = fail or '', seen = false}
      wfs[wf] = s
    end
    return s
  end
  local function count_of(id)
    if counts[id] == nil then counts[id] = tonumber(redis.call('HGET', F.wait, id) or '-1') end
    return counts[id]
  end
  local function release(id, list)
    local info = flow_info(redis.call('HGET', F.flow, id))
    local record = redis.call('HGET', F.tasks, id)
    counts[id] = -1
    if not info or not record or not F.ready[info.level] then return end
    w[#w + 1] = {'HSET', F.tasks, id,
      string.sub(record, 1, -2) .. ',"inputs":[' .. table.concat(list, ',') .. ']}'}
    local m = meta_of(redis.call('HGET', F.meta, id))
    if m then w[#w + 1] = {'HSET', F.meta, id, m.level .. '|' .. m.max_attempts .. '|' .. now} end
    w[#w + 1] = {'HDEL', F.wait, id}
    for i = 1, info.inputs do w[#w + 1] = {'HDEL', F.wait, id .. '/' .. i} end
    w[#w + 1] = {'RPUSH', F.ready[info.level], id}
  end
  local function finish(wf, s, status)
    s.status = status
    w[#w + 1] = {'ZADD', F.expiry_f, now + F.ttl, wf}
  end
  for i, e in ipairs(events) do
    local info = flow_info(infos[i])
    if info then
      w[#w + 1] = {'HDEL', F.flow, e[1]}
      local s = wf_of(info.wf)
      s.seen = true
      if s.status == 'running' and e[2] then
        s.left = s.left - 1
        for succ, idx in string.gmatch(info.succs, '([^ /]+)/(%d+)') do
          local c = count_of(succ)
          if c > 0 then
            inputs[succ .. '/' .. idx] = e[3]
            counts[succ] = c - 1
            if c == 1 then
              local sinfo = flow_info(redis.call('HGET', F.flow, succ))
              local list = {}
              for j = 1, (sinfo and sinfo.inputs or 0) do
                list[j] = inputs[succ .. '/' .. j] or redis.call('HGET', F.wait, succ .. '/' .. j) or 'null'
              end
              release(succ, list)
              dirty[succ] = nil
            else
              w[#w + 1] = {'HSET', F.wait, succ .. '/' .. idx, e[3]}
              dirty[succ] = true
            end
          end
        end
        if s.left <= 0 then
          finish(info.wf, s, 'completed')
          if s.fail ~= '' and count_of(s.fail) > 0 then
            -- Never needed: the on-failure step goes without a trace.
            w[#w + 1] = {'HDEL', F.tasks, s.fail}
            w[#w + 1] = {'HDEL', F.meta, s.fail}
            w[#w + 1] = {'HDEL', F.wait, s.fail}
            w[#w + 1] = {'HDEL', F.flow, s.fail}
            counts[s.fail] = -1
          end
        end
      elseif s.status == 'running' then
        finish(info.wf, s, 'failed')
        if s.fail ~= '' and count_of(s.fail) > 0 then release(s.fail, {e[3]}) end
        local steps = redis.call('HGET', F.flows, info.wf .. '/steps') or ''
        for sid in string.gmatch(steps, '[^ ]+') do
          if count_of(sid) > 0 then
            flow_cancel_waiting(F, w, sid, now, 'workflow ' .. info.wf .. ' failed: step ' ..
              e[1] .. ' ended ' .. (e[4] or 'failed'))
            counts[sid] = -1
            dirty[sid] = nil
            cancelled[#cancelled + 1] = sid
          end
        end
      end
    end
  end
  for id, _ in pairs(dirty) do
    if counts[id] > 0 then w[#w + 1] = {'HSET', F.wait, id, counts[id]} end
  end
  for wf, s in pairs(wfs) do
    if s.seen and s.status ~= 'gone' then
      w[#w + 1] = {'HSET', F.flows, wf, s.status .. '|' .. s.left .. '|' .. s.fail}
    end
  end
  flow_prune(F, w, now, 16)
  return w, cancelled
end

local function flow_apply(w)
  for _, cmd in ipairs(w) do redis.call(unpack(cmd)) end
end
