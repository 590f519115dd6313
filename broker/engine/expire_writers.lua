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
local t = redis.call('TIME')
local clock = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if lease <= 0 or deadline <= 0 or deadline > clock then
  return {'alive'}
end

local id = redis.call('XADD', events, '*', 'type', 'error', 'data', data)

-- Exact trimming, as in append.lua.
local max_messages = tonumber(m[3])
local length = redis.call('XLEN', events)
if max_messages and length > max_messages then
  local dropped = redis.call('XRANGE', events, '-', '+', 'COUNT', length - max_messages)
  redis.call('HSET', meta, 'dropped_until', dropped[#dropped][1])
  redis.call('XTRIM', events, 'MAXLEN', max_messages)
end

redis.call('HSET', meta, 'state', 'ended', 'updated_at', now, 'last_id', id)
redis.call('HINCRBY', meta, 'count', 1)
local ttl = tonumber(m[2]) * 1000
redis.call('PEXPIRE', meta, ttl)
redis.call('PEXPIRE', events, ttl)
redis.call('PEXPIRE', writers, ttl)

redis.call(PUBLISH, live, id .. '\n' .. 'error' .. '\n' .. data)
return {'ok', id}
