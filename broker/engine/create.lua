-- Create an open channel. See docs/redis-layout.md.
--
-- KEYS[1] events stream, KEYS[2] meta hash, KEYS[3] writers hash
-- ARGV[1] now (ms), ARGV[2] idle_ttl (s), ARGV[3] retention (s), ARGV[4] max_messages,
-- ARGV[5] writer_timeout (s, 0 = no writer lease)
-- Returns 1 when created, 0 when the channel exists.

if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
-- Leftovers of an earlier channel of the same name (its meta expired a moment before them)
-- must not leak into the new one.
redis.call('DEL', KEYS[1], KEYS[3])
redis.call('HSET', KEYS[2], 'state', 'open', 'created_at', ARGV[1], 'updated_at', ARGV[1],
  'count', 0, 'idle_ttl', ARGV[2], 'retention', ARGV[3], 'max_messages', ARGV[4])
-- The writer lease's deadline is on the Redis server's clock (TIME), like every later move of
-- it, so the clocks of brokers and workers never matter. 0: no lease.
local lease = tonumber(ARGV[5] or '0') or 0
local deadline = 0
if lease > 0 then
  deadline = server_ms() + lease * 1000
end
redis.call('HSET', KEYS[2], 'writer_timeout', lease, 'writer_deadline', deadline)
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[2]) * 1000)
return 1
