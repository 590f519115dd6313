-- A writer's heartbeat: renew the writer lease of an open channel without appending anything.
-- See docs/redis-layout.md. Called by POST /v1/channels/{id}/heartbeat and by Redis-direct
-- writers (redis_layout.heartbeat).
--
-- KEYS[1] events stream, KEYS[2] meta hash, KEYS[3] writers hash (all in one hash slot)
--
-- Returns {'ok'} | {'not_found'} | {'ended'} | {'cancelled'}.

local events, meta, writers = KEYS[1], KEYS[2], KEYS[3]

local m = redis.call('HMGET', meta, 'state', 'idle_ttl', 'writer_timeout')
local closed = closed_reply(m[1])
if closed then
  return closed
end

renew_lease(meta, m[3])
-- A living writer keeps its channel from expiring, as a write would.
expire_all(events, meta, writers, m[2])
return {'ok'}
