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
