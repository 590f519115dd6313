-- Create an open channel. See docs/redis-layout.md.
--
-- KEYS[1] events stream, KEYS[2] meta hash, KEYS[3] writers hash
-- ARGV[1] now (ms), ARGV[2] idle_ttl (s), ARGV[3] retention (s), ARGV[4] max_messages
-- Returns 1 when created, 0 when the channel exists.

if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
-- Leftovers of an earlier channel of the same name (its meta expired a moment before them)
-- must not leak into the new one.
redis.call('DEL', KEYS[1], KEYS[3])
redis.call('HSET', KEYS[2], 'state', 'open', 'created_at', ARGV[1], 'updated_at', ARGV[1],
  'count', 0, 'idle_ttl', ARGV[2], 'retention', ARGV[3], 'max_messages', ARGV[4])
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[2]) * 1000)
return 1
