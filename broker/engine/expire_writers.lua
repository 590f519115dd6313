-- End one channel whose writer lease ran out: append the terminal 'error' event, atomically with
-- the check that the channel is still open and its deadline (server clock) has passed, so a write
-- or heartbeat that came first always wins. See docs/redis-layout.md. Engine.expire_writers calls
-- it once per candidate channel (channels live in different slots, so not one call for all).
--
-- KEYS[1] events stream, KEYS[2] meta hash, KEYS[3] writers hash (all in one hash slot)
-- ARGV[1] pub/sub channel for live delivery (PUBLISH, defined by the prelude redis_layout.py
--         prepends, is SPUBLISH on Redis >= 7)
-- ARGV[2] now, ms since the epoch (updated_at)
-- ARGV[3] the error event's msgpack data ({"code": "writer_timeout", "message": ...})
--
-- Returns {'ok', id} when it ended the channel, else {'alive'}.

local events, meta, writers = KEYS[1], KEYS[2], KEYS[3]
local live, now, data = ARGV[1], ARGV[2], ARGV[3]

local m = redis.call('HMGET', meta, 'state', 'retention', 'max_messages', 'writer_timeout',
  'writer_deadline')
if m[1] ~= 'open' then
  return {'alive'}
end
local lease = tonumber(m[4] or '0') or 0
local deadline = tonumber(m[5] or '0') or 0
if lease <= 0 or deadline <= 0 or deadline > server_ms() then
  return {'alive'}
end

local id = append_terminal(events, meta, writers, live, now, 'error', data, 'ended', m[3], m[2])
return {'ok', id}
