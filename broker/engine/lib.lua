-- Local functions shared by the scripts: redis_layout.py prepends this file (after the line that
-- defines PUBLISH) to every script it loads, so each script stays one self-contained EVAL body.

-- The answer for a channel that cannot take writes: {'not_found'} (no meta), {'cancelled'},
-- {'ended'}; nil while it is open.
local function closed_reply(state)
  if not state then
    return {'not_found'}
  end
  if state == 'cancelled' then
    return {'cancelled'}
  end
  if state ~= 'open' then
    return {'ended'}
  end
  return nil
end

-- The Redis server's clock in ms: deadlines never depend on a broker's or worker's clock.
local function server_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Move the writer lease's deadline to now + lease seconds (no lease: 0 or absent, nothing).
local function renew_lease(meta, lease)
  lease = tonumber(lease or '0') or 0
  if lease > 0 then
    redis.call('HSET', meta, 'writer_deadline', server_ms() + lease * 1000)
  end
end

-- Exact trimming (not MAXLEN ~): a reader must be able to tell precisely what it missed, so the
-- id of the newest dropped entry is kept in meta as dropped_until.
local function trim_exactly(events, meta, max_messages)
  max_messages = tonumber(max_messages)
  local length = redis.call('XLEN', events)
  if max_messages and length > max_messages then
    local dropped = redis.call('XRANGE', events, '-', '+', 'COUNT', length - max_messages)
    redis.call('HSET', meta, 'dropped_until', dropped[#dropped][1])
    redis.call('XTRIM', events, 'MAXLEN', max_messages)
  end
end

-- All keys of a channel expire together; a key that does not exist yet (no event, no writer)
-- is simply skipped by PEXPIRE.
local function expire_all(events, meta, writers, ttl_seconds)
  local ttl = tonumber(ttl_seconds) * 1000
  redis.call('PEXPIRE', meta, ttl)
  redis.call('PEXPIRE', events, ttl)
  redis.call('PEXPIRE', writers, ttl)
end

-- Live delivery of one new entry: "<id>\n<type>\n<msgpack data>".
local function publish_entry(live, id, kind, data)
  redis.call(PUBLISH, live, id .. '\n' .. kind .. '\n' .. data)
end

-- Append one terminal entry and close the channel with `state`: trim, meta (state, updated_at,
-- last_id, count), retention TTL on every key, publish. Returns the entry's id.
local function append_terminal(events, meta, writers, live, now, kind, data, state, max_messages,
                               retention)
  local id = redis.call('XADD', events, '*', 'type', kind, 'data', data)
  trim_exactly(events, meta, max_messages)
  redis.call('HSET', meta, 'state', state, 'updated_at', now, 'last_id', id)
  redis.call('HINCRBY', meta, 'count', 1)
  expire_all(events, meta, writers, retention)
  publish_entry(live, id, kind, data)
  return id
end
