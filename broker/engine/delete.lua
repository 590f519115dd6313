-- Delete a channel and tell every broker process watching it. See docs/redis-layout.md.
--
-- KEYS[1] events stream, KEYS[2] meta hash, KEYS[3] writers hash
-- ARGV[1] pub/sub channel for live delivery (PUBLISH, defined by the prelude redis_layout.py
--         prepends, is SPUBLISH on Redis >= 7)
-- Returns 1 when the channel existed, else 0.

if redis.call('EXISTS', KEYS[2]) == 0 then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
-- An empty id and the type 'deleted': subscribers of other processes are disconnected.
redis.call(PUBLISH, ARGV[1], '\ndeleted\n')
return 1
