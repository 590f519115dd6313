-- Append a batch of events to one channel, atomically. See docs/redis-layout.md.
--
-- KEYS[1] events stream, KEYS[2] meta hash, KEYS[3] writers hash (all in one hash slot)
-- ARGV[1] pub/sub channel for live delivery (PUBLISH, defined by the prelude redis_layout.py
--         prepends, is SPUBLISH on Redis >= 7)
-- ARGV[2] now, ms since the epoch (updated_at)
-- ARGV[3] writer id, '' for none (no dedup)
-- ARGV[4] the batch's first seq, ARGV[5] its last seq (first + n - 1, computed by the caller so
--         that Lua never formats a large number as a float)
-- ARGV[6], ARGV[7], ... pairs of (type, msgpack data); only the last may be end/error
--
-- Returns {'ok', last_id, id1, id2, ...} | {'duplicate', last_id_of_writer} | {'not_found'}
-- | {'ended'} | {'cancelled'} (a reader cancelled it: cancel.lua). last_id is '' when the
-- channel holds no event.

local events, meta, writers = KEYS[1], KEYS[2], KEYS[3]
local live, now, writer = ARGV[1], ARGV[2], ARGV[3]

local m = redis.call('HMGET', meta, 'state', 'idle_ttl', 'retention', 'max_messages', 'last_id',
  'writer_timeout')
if not m[1] then
  return {'not_found'}
end

-- Dedup before the state check: a writer retrying its terminal write after the channel ended
-- must get its original answer, not an error.
if writer ~= '' then
  local stored = redis.call('HGET', writers, writer)
  if stored then
    local space = string.find(stored, ' ', 1, true)
    if tonumber(ARGV[4]) <= tonumber(string.sub(stored, 1, space - 1)) then
      return {'duplicate', string.sub(stored, space + 1)}
    end
  end
end

local closed = closed_reply(m[1])
if closed then
  return closed
end

local result = {'ok', ''}
local last_id = m[5] or ''
local kinds = {}
local terminal = false
local n = (#ARGV - 5) / 2
for i = 1, n do
  local kind = ARGV[4 + 2 * i]
  local id = redis.call('XADD', events, '*', 'type', kind, 'data', ARGV[5 + 2 * i])
  result[i + 2] = id
  kinds[i] = kind
  last_id = id
  if kind ~= 'message' then
    terminal = true
  end
end

trim_exactly(events, meta, m[4])

redis.call('HSET', meta, 'updated_at', now, 'last_id', last_id)
redis.call('HINCRBY', meta, 'count', n)
local ttl
if terminal then
  redis.call('HSET', meta, 'state', 'ended')
  ttl = m[3]
else
  ttl = m[2]
  -- A write renews the writer lease (deadline on the server's clock, see create.lua).
  renew_lease(meta, m[6])
end
if writer ~= '' then
  redis.call('HSET', writers, writer, ARGV[5] .. ' ' .. last_id)
end
expire_all(events, meta, writers, ttl)

for i = 1, n do
  publish_entry(live, result[i + 2], kinds[i], ARGV[5 + 2 * i])
end

result[2] = last_id
return result
