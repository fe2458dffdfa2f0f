-- lib/ledger.lua: adding usage to ledger counters (used by record_usage and settle).

-- Parse "field, increment" pairs from ARGV[first..last]: at most 64, each increment a positive
-- integer (counters only grow, so a field this call finds holding just its increment is one it
-- made; HINCRBY refuses a leading zero); nil and an error reply if bad.
local function usage_pairs(first, last)
  local out = {}
  if last - first >= 128 then
    return nil, redis.error_reply('ERR_ARGS at most 64 field, increment pairs')
  end
  for j = first, last, 2 do
    local field, by = ARGV[j], ARGV[j + 1]
    if field == nil or field == '' or by == nil or #by > 19 or not string.match(by, '^[1-9]%d*$') then
      return nil, redis.error_reply('ERR_ARGS increment ' .. tostring(field) .. ' must be a positive integer')
    end
    out[#out + 1] = {field, by}
  end
  return out
end

-- Whether the client named the time-bucket keys after the server's minute, hour and day.
local function buckets_match(now, minute, hour, day)
  return tonumber(minute) == math.floor(now / 60000) and tonumber(hour) == math.floor(now / 3600000)
    and tonumber(day) == math.floor(now / 86400000)
end

-- Add every pair to every key of keys[first..last] (groups of four: total, minute, hour,
-- day). On an overflow, undo what this call added and return an error reply: a field this
-- call made is deleted again (and with its last field, a hash this call made), any other is
-- brought back to what it held.
local function add_usage(first, last, pairs_)
  local done = {}
  for k = first, last do
    for _, p in ipairs(pairs_) do
      local ok = redis.pcall('HINCRBY', KEYS[k], p[1], p[2])
      if type(ok) == 'table' and ok.err then
        local failure = string.match(ok.err, '^WRONGTYPE') and ok.err .. '; nothing recorded'
          or 'ERR_OVERFLOW ' .. p[1] .. ' of ' .. KEYS[k] .. ' would overflow; nothing recorded'
        for _, d in ipairs(done) do
          if d[4] then
            redis.call('HDEL', d[1], d[2])
          else
            redis.call('HINCRBY', d[1], d[2], '-' .. d[3])
          end
        end
        return redis.error_reply(failure)
      end
      -- The field was new if it now holds just the increment (a counter that held 0, which no
      -- script leaves, would be deleted: an absent counter reads as 0 all the same).
      done[#done + 1] = {KEYS[k], p[1], p[2], ok == tonumber(p[2])}
    end
  end
  -- Buckets expire: minutes after 2 days, hours after 90 days, days after 2 years.
  local keep = {0, 172800000, 7776000000, 63072000000}
  for k = first, last do
    local slot = ((k - first) % 4) + 1
    if slot ~= 1 then
      redis.call('PEXPIRE', KEYS[k], keep[slot])
    end
  end
  return nil
end

-- Before any write of a record: read the usage stream (when the record is sampled) and the
-- tenant set, so that one of the wrong type fails the call with nothing written. Returns
-- whether the tenant is new to the set.
local function check_notes(events_key, cap, tenant, tenants_key)
  if cap > 0 then
    redis.call('XLEN', events_key)
  end
  return tenant ~= '' and redis.call('SISMEMBER', tenants_key, tenant) == 0
end

-- After a recorded request: remember a new tenant in the model's tenant set (for statistics by
-- tenant without SCAN) and, when the client sampled it (cap > 0), add it to the model's
-- capped usage stream, in the same script as the counters it describes.
local function note_usage(events_key, cap, request_id, tenant, tenants_key, pairs_, new_tenant)
  if new_tenant then
    redis.call('SADD', tenants_key, tenant)
  end
  if cap > 0 then
    local fields = {'type', 'usage.recorded', 'request_id', request_id, 'tenant', tenant}
    for _, p in ipairs(pairs_) do
      fields[#fields + 1] = p[1]
      fields[#fields + 1] = p[2]
    end
    redis.call('XADD', events_key, 'MAXLEN', '~', cap, '*', unpack(fields))
  end
end

