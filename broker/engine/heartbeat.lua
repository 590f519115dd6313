-- A writer's heartbeat: renew the writer lease of an open channel without appending anything.
-- See docs/redis-layout.md. Called by POST /v1/channels/{id}/heartbeat and by Redis-direct
-- writers (redis_layout.heartbeat).
--
-- KEYS[1] events stream, KEYS[2] meta hash, KEYS[3] writers hash (all in one hash slot)
--
-- Returns {'ok'} | {'not_found'} | {'ended'} | {'cancelled'}.

local events, meta, writers = KEYS[1], KEYS[2], KEYS[3]

local m = redis.call('HMGET', meta, 'state', 'idle_ttl', 'writer_timeout')
if not m[1] then
  return {'not_found'}
end
if m[1] == 'cancelled' then
  return {'cancelled'}
end
if m[1] ~= 'open' then
  return {'ended'}
end

local lease = tonumber(m[3] or '0') or 0
if lease > 0 then
  local t = redis.call('TIME')
  redis.call('HSET', meta, 'writer_deadline',
    tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + lease * 1000)
end
-- A living writer keeps its channel from expiring, as a write would.
local ttl = tonumber(m[2]) * 1000
redis.call('PEXPIRE', meta, ttl)
redis.call('PEXPIRE', events, ttl)
redis.call('PEXPIRE', writers, ttl)
return {'ok'}
