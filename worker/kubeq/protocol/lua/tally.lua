#!lua
-- tally: add a worker's per-task-type outcome counts (completed, failed, retried, dead,
-- cancelled, runs, duration_ms) to the queue's per-type counters.
-- Flags: none (may write).
-- KEYS[1] type_counters HASH
-- ARGV[1] N (at most MAX_BATCH), then N triples: task type, counter name, increment
-- Returns: N.
local n = tonumber(ARGV[1])
check_batch(n, 'tally')
for i = 0, n - 1 do
  if not tonumber(ARGV[4 + i * 3]) then
    return redis.error_reply('BADTALLY increment ' .. tostring(ARGV[4 + i * 3]))
  end
end
for i = 0, n - 1 do
  count_type(KEYS[1], ARGV[2 + i * 3], ARGV[3 + i * 3], tonumber(ARGV[4 + i * 3]))
end
return n
