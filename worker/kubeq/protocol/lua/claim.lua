-- claim: promote due delayed tasks, then pop up to N ready tasks by priority and lease them.
-- KEYS[1] tasks HASH  KEYS[2] attempts HASH  KEYS[3] holders HASH  KEYS[4] fence counter
-- KEYS[5] counters HASH  KEYS[6] rate bucket HASH  KEYS[7] wake LIST
-- KEYS[8 ..] three keys per level, in the order to serve them:
--            ready LIST, delayed ZSET, leases ZSET
-- ARGV[1] now_ms  ARGV[2] N (max tasks)  ARGV[3] worker id  ARGV[4] lease ms
-- ARGV[5] L (levels)  ARGV[6] promote limit per level
-- ARGV[7] rate in tasks per ms (0: no limit)  ARGV[8] bucket burst
-- ARGV[9..8+L] each served level's index in the queue's level order (reported back)
-- Returns: {wait_ms, then per task one string "<level> <token> <attempts> <id> <record JSON>"}
--          (one reply element per task: each element costs Redis more than the bytes)
--          wait_ms > 0 when the rate limit held tasks back: when a token is next due.
local now = tonumber(ARGV[1])
local want = tonumber(ARGV[2])
local worker = ARGV[3]
local deadline = now + tonumber(ARGV[4])
local L = tonumber(ARGV[5])
local promote_limit = tonumber(ARGV[6])
local rate = tonumber(ARGV[7])
local burst = tonumber(ARGV[8])

-- Promotion first, so a due task is claimable even when no maintenance ran.
local promoted = 0
for lv = 0, L - 1 do
  local ready, delayed = KEYS[8 + lv * 3], KEYS[9 + lv * 3]
  local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, promote_limit)
  if #due > 0 then
    redis.call('RPUSH', ready, unpack(due))
    redis.call('ZREM', delayed, unpack(due))
    promoted = promoted + #due
  end
end

local wait_ms = 0
local tokens = 0
if rate > 0 then
  local bucket = redis.call('HMGET', KEYS[6], 'tokens', 'ts')
  tokens = tonumber(bucket[1]) or burst
  local ts = tonumber(bucket[2]) or now
  if now > ts then
    tokens = math.min(burst, tokens + (now - ts) * rate)
  end
  if tokens < want then
    want = math.floor(tokens)
  end
end

local out = {0}
local taken = 0
if want > 0 then
  for lv = 0, L - 1 do
    local ready, leases = KEYS[8 + lv * 3], KEYS[10 + lv * 3]
    local ids = redis.call('LPOP', ready, want - taken)
    if ids then
      local records = redis.call('HMGET', KEYS[1], unpack(ids))
      local live = {}
      for j, id in ipairs(ids) do
        -- An id without a record was removed behind the list's back (purge): skip it.
        if records[j] then live[#live + 1] = j end
      end
      if #live > 0 then
        local first = redis.call('INCRBY', KEYS[4], #live) - #live
        local live_ids = {}
        for k, j in ipairs(live) do live_ids[k] = ids[j] end
        local counted = redis.call('HMGET', KEYS[2], unpack(live_ids))
        local holders, lease_args, attempts_args = {}, {}, {}
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
          out[#out + 1] = ARGV[9 + lv] .. ' ' .. token .. ' ' .. attempts .. ' ' .. id .. ' ' .. records[j]
        end
        redis.call('HSET', KEYS[2], unpack(attempts_args))
        redis.call('HSET', KEYS[3], unpack(holders))
        redis.call('ZADD', leases, unpack(lease_args))
        taken = taken + #live
      end
      if taken >= want then
        break
      end
    end
  end
end

if rate > 0 then
  tokens = tokens - taken
  redis.call('HSET', KEYS[6], 'tokens', tostring(tokens), 'ts', now)
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
end
out[1] = wait_ms
return out
