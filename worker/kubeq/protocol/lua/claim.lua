#!lua
-- claim: promote due delayed tasks, then pop up to N ready tasks by priority and lease them.
-- Flags: none (may write; refused whole when Redis is out of memory, so no task is popped
-- that could not also be leased).
-- KEYS[1] tasks HASH  KEYS[2] attempts HASH  KEYS[3] holders HASH  KEYS[4] fence counter
-- KEYS[5] counters HASH  KEYS[6] rate bucket HASH  KEYS[7] wake LIST  KEYS[8] meta HASH
-- KEYS[9] this worker's claims HASH (claim id and what each chunk leased)
-- KEYS[10 ..] three keys per level, in the order to serve them:
--             ready LIST, delayed ZSET, leases ZSET
-- KEYS[#KEYS] the queue's paused STRING (last, after the levels): while it exists a claim
--             takes nothing new (a repeated claim still gets back what it leased)
-- ARGV[1] now_ms (0: Redis TIME)  ARGV[2] N (max tasks, at most MAX_BATCH)
-- ARGV[3] worker id  ARGV[4] lease ms  ARGV[5] L (levels)  ARGV[6] promote limit per level
-- ARGV[7] rate in tasks per ms (0: no limit)  ARGV[8] bucket burst
-- ARGV[9] claim id ('' : none)  ARGV[10] chunk number within that claim
-- ARGV[11..10+L] each served level's index in the queue's level order (reported back)
-- Returns: {wait_ms, then per task one string "<level> <token> <attempts> <id> <record JSON>"}
--          (one reply element per task: each element costs Redis more than the bytes)
--          wait_ms > 0 when the rate limit held tasks back: when a token is next due.
-- A claim repeated with the same claim id and chunk (its reply was lost) returns the tasks
-- that claim leased and this worker still holds, instead of leasing (and charging) anew.
-- N = 0 abandons a claim id: what it leased comes back as above; if it has not run, the id
-- is spent (stored with an empty chunk), so that claim takes nothing if it runs later.
local now = clock(ARGV[1])
local want = tonumber(ARGV[2])
local worker = ARGV[3]
local lease_ms = tonumber(ARGV[4])
local deadline = now + lease_ms
local L = tonumber(ARGV[5])
local promote_limit = tonumber(ARGV[6])
local rate = tonumber(ARGV[7])
local burst = tonumber(ARGV[8])
local claim_id = ARGV[9]
local chunk = ARGV[10]
check_batch(want, 'claim')

local stored_claim = nil
if claim_id ~= '' then
  stored_claim = redis.call('HGET', KEYS[9], 'id')
  if stored_claim == claim_id then
    local prev = redis.call('HGET', KEYS[9], chunk)
    if prev then
      -- The same claim again: hand back what it leased that this worker still holds.
      local out = {0}
      for lv, token, id in string.gmatch(prev, '(%d+) (%d+) (%S+)') do
        local holder = redis.call('HGET', KEYS[3], id)
        local prefix = token .. '|' .. worker .. '|'
        local record = redis.call('HGET', KEYS[1], id)
        if holder and record and string.sub(holder, 1, #prefix) == prefix then
          local attempts = redis.call('HGET', KEYS[2], id) or '1'
          out[#out + 1] = lv .. ' ' .. token .. ' ' .. attempts .. ' ' .. id .. ' ' .. record
        end
      end
      return out
    end
  end
end

-- Remember what this claim id leased in this chunk ('': nothing), for as long as a lease
-- lasts, so a retry of a claim whose reply was lost gets these tasks back instead of
-- charging new attempts (and an abandoned id takes nothing).
local function remember(leased_text)
  if stored_claim ~= claim_id then
    redis.call('DEL', KEYS[9])  -- a new id: no chunk of an older claim may answer for it
    redis.call('HSET', KEYS[9], 'id', claim_id, chunk, leased_text)
  else
    redis.call('HSET', KEYS[9], chunk, leased_text)
  end
  redis.call('PEXPIRE', KEYS[9], lease_ms)
end

if want == 0 then
  if claim_id ~= '' then
    remember('')
  end
  return {0}
end

if redis.call('EXISTS', KEYS[#KEYS]) == 1 then
  return {0}
end

-- Promotion first, so a due task is claimable even when no maintenance ran. Tasks due in
-- the same ms keep their submission order (the meta sequence), not the ZSET's member order.
local promoted = 0
-- One EXISTS over the levels' delayed sets first (64 levels per call, so the unpack stays
-- bounded): with none (no retries or delays pending, the common case) that is one call
-- instead of one range query per level.
local any_delayed = false
for first = 0, L - 1, 64 do
  local delayed_group = {}
  for lv = first, math.min(first + 63, L - 1) do
    delayed_group[#delayed_group + 1] = KEYS[11 + lv * 3]
  end
  if redis.call('EXISTS', unpack(delayed_group)) > 0 then
    any_delayed = true
    break
  end
end
for lv = 0, L - 1 do
  local ready, delayed = KEYS[10 + lv * 3], KEYS[11 + lv * 3]
  local due = any_delayed and redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'WITHSCORES', 'LIMIT', 0, promote_limit) or {}
  if #due > 0 then
    local ids = {}
    for j = 1, #due, 2 do ids[#ids + 1] = due[j] end
    local metas = redis.call('HMGET', KEYS[8], unpack(ids))
    local order = {}
    for j, id in ipairs(ids) do
      local m = meta_of(metas[j])
      order[j] = {id = id, due = tonumber(due[j * 2]), seq = m and m.seq or 0}
    end
    table.sort(order, function(a, b)
      if a.due ~= b.due then return a.due < b.due end
      if a.seq ~= b.seq then return a.seq < b.seq end
      return a.id < b.id
    end)
    local sorted = {}
    for j, e in ipairs(order) do sorted[j] = e.id end
    sliced('RPUSH', ready, sorted)
    sliced('ZREM', delayed, ids)
    promoted = promoted + #ids
  end
end

local tokens = 0
local ts = now
if rate > 0 then
  local bucket = redis.call('HMGET', KEYS[6], 'tokens', 'ts')
  tokens = tonumber(bucket[1]) or burst
  ts = tonumber(bucket[2]) or now
  -- The bucket never rewinds: a refill only ever moves its time forward.
  if now > ts then
    tokens = math.min(burst, tokens + (now - ts) * rate)
    ts = now
  end
  if tokens < want then
    want = math.max(0, math.floor(tokens))
  end
end

local out = {0}
local taken = 0
local leased = {}
if want > 0 then
  for lv = 0, L - 1 do
    local ready, leases = KEYS[10 + lv * 3], KEYS[12 + lv * 3]
    local ids = redis.call('LPOP', ready, want - taken)
    if ids then
      local records = redis.call('HMGET', KEYS[1], unpack(ids))
      local live_ids = {}
      local live = {}
      for j, id in ipairs(ids) do
        -- An id without a record was removed behind the list's back (purge): skip it.
        if records[j] then
          live[#live + 1] = j
          live_ids[#live_ids + 1] = id
        end
      end
      if #live > 0 then
        local first = redis.call('INCRBY', KEYS[4], #live) - #live
        local counted = redis.call('HMGET', KEYS[2], unpack(live_ids))
        local holders, lease_args, attempts_args = {}, {}, {}
        local level = ARGV[11 + lv]
        for k, j in ipairs(live) do
          local id = ids[j]
          local token = first + k
          local attempts = (tonumber(counted[k]) or 0) + 1
          holders[#holders + 1] = id
          holders[#holders + 1] = token .. '|' .. worker .. '|' .. now
          lease_args[#lease_args + 1] = deadline
          lease_args[#lease_args + 1] = id
          attempts_args[#attempts_args + 1] = id
          attempts_args[#attempts_args + 1] = attempts
          leased[#leased + 1] = level .. ' ' .. token .. ' ' .. id
          out[#out + 1] = level .. ' ' .. token .. ' ' .. attempts .. ' ' .. id .. ' ' .. records[j]
        end
        sliced('HSET', KEYS[2], attempts_args)
        sliced('HSET', KEYS[3], holders)
        sliced('ZADD', leases, lease_args)
        taken = taken + #live
      end
      if taken >= want then
        break
      end
    end
  end
end

local wait_ms = 0
if rate > 0 then
  tokens = tokens - taken
  redis.call('HSET', KEYS[6], 'tokens', tostring(tokens), 'ts', ts)
  redis.call('PEXPIRE', KEYS[6], math.max(1000, math.ceil(burst / rate) * 2))
  if taken < tonumber(ARGV[2]) and tokens < 1 then
    wait_ms = math.ceil((1 - tokens) / rate)
  end
end
if promoted > 0 then
  -- Wake other idle workers for what this claim did not take.
  redis.call('RPUSH', KEYS[7], '1')
  redis.call('LTRIM', KEYS[7], -64, -1)
end
if taken > 0 then
  redis.call('HINCRBY', KEYS[5], 'claimed', taken)
  if claim_id ~= '' then
    remember(table.concat(leased, ' '))
  end
end
out[1] = wait_ms
return out
