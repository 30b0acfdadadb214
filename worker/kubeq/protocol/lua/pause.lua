#!lua
-- pause: stop (or, with an empty reason of '-', resume) claiming from the queue.
-- Flags: none (may write). Running tasks are untouched: they finish and settle as usual;
-- only new claims take nothing while the key exists (claim.lua checks it).
-- KEYS[1] paused STRING  KEYS[2] counters HASH  KEYS[3] wake LIST
-- ARGV[1] now_ms (0: Redis TIME)  ARGV[2] 'pause' or 'resume'  ARGV[3] reason (pause only)
-- Returns: 1 when the state changed, 0 when the queue already was in that state.
local now = clock(ARGV[1])
local was = redis.call('EXISTS', KEYS[1]) == 1
if ARGV[2] == 'pause' then
  if was then return 0 end
  redis.call('SET', KEYS[1], now .. '|' .. ARGV[3])
  redis.call('HINCRBY', KEYS[2], 'paused', 1)
  return 1
end
if not was then return 0 end
redis.call('DEL', KEYS[1])
-- Wake idle workers: there may be a backlog waiting for them.
redis.call('RPUSH', KEYS[3], '1')
redis.call('LTRIM', KEYS[3], -64, -1)
return 1
