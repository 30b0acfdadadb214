#!lua
-- run_now: make a scheduled or retrying task due now: move it from its level's delayed
-- set to the end of that level's ready list, so the next claim can take it.
-- Flags: none (may write).
-- KEYS[1] wake LIST  KEYS[2] counters HASH
-- KEYS[3 .. 2+2L] two keys per level, in level order: ready LIST, delayed ZSET
-- ARGV[1] L  ARGV[2] task id
-- Returns: the 1-based index of the task's level, or 0 when it is not scheduled or
-- retrying (pending, running, finished, dead or unknown: nothing is written).
local L = tonumber(ARGV[1])
local id = ARGV[2]
local found = 0
for lv = 1, L do
  if redis.call('ZSCORE', KEYS[2 + lv * 2], id) then
    found = lv
    break
  end
end
if found == 0 then return 0 end
redis.call('ZREM', KEYS[2 + found * 2], id)
redis.call('RPUSH', KEYS[1 + found * 2], id)
redis.call('RPUSH', KEYS[1], '1')
redis.call('LTRIM', KEYS[1], -64, -1)
redis.call('HINCRBY', KEYS[2], 'run_now', 1)
return found
