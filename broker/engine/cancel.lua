-- Cancel a channel: append the terminal 'cancelled' event and set state 'cancelled', atomically.
-- See docs/redis-layout.md. Any reader may cancel (a Stop button); the writer learns it from the
-- 'cancelled' entry on the live pub/sub channel, the meta state, or append.lua's answer.
--
-- KEYS[1] events stream, KEYS[2] meta hash, KEYS[3] writers hash (all in one hash slot)
-- ARGV[1] pub/sub channel for live delivery (PUBLISH, defined by the prelude redis_layout.py
--         prepends, is SPUBLISH on Redis >= 7)
-- ARGV[2] now, ms since the epoch (updated_at)
-- ARGV[3] the event's msgpack data ({"reason": ...})
--
-- Returns {'ok', id} | {'duplicate', last_id} (already cancelled) | {'not_found'} | {'ended'}.

local events, meta, writers = KEYS[1], KEYS[2], KEYS[3]
local live, now, data = ARGV[1], ARGV[2], ARGV[3]

local m = redis.call('HMGET', meta, 'state', 'retention', 'max_messages', 'last_id')
if not m[1] then
  return {'not_found'}
end
if m[1] == 'cancelled' then
  return {'duplicate', m[4] or ''}
end
if m[1] ~= 'open' then
  return {'ended'}
end

local id = append_terminal(events, meta, writers, live, now, 'cancelled', data, 'cancelled', m[3],
  m[2])
return {'ok', id}
