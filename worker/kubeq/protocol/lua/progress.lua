#!lua
-- progress: store the latest progress value of a batch of running tasks, each only while
-- the writer still holds the task's lease.
-- Flags: none (may write; refused whole when Redis is out of memory: progress is best
-- effort, the worker keeps the latest value and writes it with its next flush).
-- KEYS[1] holders HASH  KEYS[2] progress HASH
-- ARGV[1] now_ms (0: Redis TIME)  ARGV[2] worker id  ARGV[3] max value bytes
-- ARGV[4] N (at most MAX_BATCH), then N tuples of 3: id, token, value JSON
-- Stored: progress[id] = '{"at":<now ms>,"value":<value JSON>}'.
-- Fencing: written only when the holder is exactly "<token>|<worker id>|...": a value that
-- arrives after its task was settled or reaped (which delete progress) is dropped, so
-- progress never outlives its task.
-- Returns: N integers, 1 written, 0 dropped (the lease is no longer this worker's).
local now = clock(ARGV[1])
local worker = ARGV[2]
local limit = tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local T = 3
check_batch(n, 'progress')
if n == 0 then return {} end

-- Validate and read everything first: no error can follow a write.
local ids = {}
for i = 0, n - 1 do
  local a = 5 + i * T
  local value = ARGV[a + 2]
  if not limit or #value == 0 or #value > limit then
    return redis.error_reply('BADPROGRESS task ' .. ARGV[a] .. ': value of ' .. #value ..
      ' bytes is outside 1..' .. tostring(limit))
  end
  ids[#ids + 1] = ARGV[a]
end
local holders = redis.call('HMGET', KEYS[1], unpack(ids))

-- Write.
local out, writes = {}, {}
for i = 0, n - 1 do
  local a = 5 + i * T
  local holder = holders[i + 1]
  local prefix = ARGV[a + 1] .. '|' .. worker .. '|'
  if holder and string.sub(holder, 1, #prefix) == prefix then
    writes[#writes + 1] = ARGV[a]
    writes[#writes + 1] = '{"at":' .. string.format('%d', now) .. ',"value":' .. ARGV[a + 2] .. '}'
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
if #writes > 0 then
  sliced('HSET', KEYS[2], writes)
end
return out
