-- acquire.lua: check every limit of a request and consume all of them, or none.
--
-- Sliding windows of sub-window buckets: a limit's hash maps a bucket index
-- (floor(time_ms / bucket_ms)) to what was admitted in it, and keeps `_sum` and `_low`
-- (the total of its live buckets and the oldest one) so that most calls read two fields. At time `now` the window
-- (now - window_ms, now] counts every bucket that overlaps it in full, so a partly expired
-- bucket still counts: the error only ever refuses early (by at most one bucket), never
-- admits more than the limit in any interval of window_ms.
--
-- KEYS[1]   the reservation (hash), written when admitted
-- KEYS[1+i] the window hash of limit i (i = 1..n); all keys share the model's hash tag
-- KEYS[2+n] optional: the model's denial counters (hash: limit name -> refusals), counted
--           on each refusal of an acquire (status 0 or 3), never by a peek
-- ARGV[1]   now in ms, or "" to use the server's TIME (the testing clock hook)
-- ARGV[2]   mode: "acquire" | "shadow" (count, never refuse) | "peek" (write nothing)
-- ARGV[3]   reservation TTL in ms (at most 30 days)
-- ARGV[4]   n, the number of limits
-- ARGV[5]   this acquire's token, new for each call: stored in the reservation, so that settling
--           a handle from an earlier use of the same reservation id never touches a later one.
--           A reservation named after the token itself (no caller-given id) is not looked up.
-- ARGV[6 + 5*(i-1) + 0..4] limit i: name, limit, window_ms, bucket_ms, cost
--
-- returns {status, now_ms, binding, retry_after_ms, token, remaining_1, ..., remaining_n}
--   token is the stored reservation's token for status 2, else ""
--   status 1 admitted, 0 refused, 2 already admitted under this reservation (nothing
--   consumed again), 3 refused for good: cost of limit `binding` exceeds the limit itself,
--   4 shadow: admitted although limit `binding` would have refused.
--   binding is the index of the limit that refuses longest (0: none).
-- Bad arguments raise an error before anything is written.

local n = tonumber(ARGV[4])
--! include common
if not whole(n, 0, 64) or (#KEYS ~= 1 + n and #KEYS ~= 2 + n) or #ARGV ~= 5 + 5 * n then
  return redis.error_reply('ERR_ARGS expected n limits: 1 + n keys (2 + n with denials) and 5 + 5n args')
end
local token = ARGV[5]
if token == '' or #token > 64 then
  return redis.error_reply('ERR_ARGS token must be 1 to 64 characters')
end
local mode = ARGV[2]
if mode ~= 'acquire' and mode ~= 'shadow' and mode ~= 'peek' then
  return redis.error_reply('ERR_ARGS unknown mode ' .. tostring(mode))
end
local ttl = tonumber(ARGV[3])
if not whole(ttl, 1, 2592000000) then
  return redis.error_reply('ERR_ARGS reservation ttl must be an integer from 1 to 2592000000 ms')
end
local now, bad_now = clock(ARGV[1])
if not now then
  return bad_now
end

local limits = {}
for i = 1, n do
  local base = 6 + 5 * (i - 1)
  local limit, window, bucket, cost = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2]),
    tonumber(ARGV[base + 3]), tonumber(ARGV[base + 4])
  if not (whole(limit, 0, MAX) and whole(window, 0, MAX) and whole(bucket, 0, MAX) and whole(cost, 0, MAX)) then
    return redis.error_reply('ERR_ARGS limit ' .. i .. ': numbers must be integers >= 0')
  end
  if ARGV[base] == '' or string.find(ARGV[base], '%s') then
    return redis.error_reply('ERR_ARGS limit ' .. i .. ': bad name')
  end
  if bucket < 1 or window < bucket or window % bucket ~= 0 then
    return redis.error_reply('ERR_ARGS limit ' .. i .. ': window must be a multiple of the bucket')
  end
  limits[i] = {name = ARGV[base], limit = limit, window = window, bucket = bucket, cost = cost}
end

-- Idempotent: a retried acquire of the same reservation consumes nothing again. A reservation
-- named after this call's own token (new for each call) cannot be held yet: no need to look.
local fresh = string.sub(KEYS[1], -(#token + 3)) == ':r:' .. token
local held = mode ~= 'peek' and not fresh and redis.call('HGET', KEYS[1], 'tok')
if held then
  local reply = {2, now, 0, 0, held}
  for i = 1, n do reply[#reply + 1] = -1 end
  return reply
end

-- A refusal of an acquire counts against the limit that made it.
local function denied(i)
  if mode ~= 'peek' and #KEYS == 2 + n then
    redis.call('HINCRBY', KEYS[2 + n], limits[i].name, 1)
  end
end

-- Too large ever to be admitted: refuse before reading anything else.
for i = 1, n do
  if limits[i].cost > limits[i].limit then
    denied(i)
    local reply = {3, now, i, -1, ''}
    for _ = 1, n do reply[#reply + 1] = -1 end
    return reply
  end
end

-- Count each window. Fast path: the hash keeps `_sum` (what its live buckets hold) and
-- `_low` (its oldest bucket); while that bucket is still in the window, nothing expired and
-- the total is `_sum`. Otherwise (about once per bucket width) read every bucket, drop the
-- expired ones and recount. A refusal reads the buckets to find when the request fits.
local function buckets(l, key)
  local flat = redis.call('HGETALL', key)
  local live, expired, total, low = {}, {}, 0, nil
  for j = 1, #flat, 2 do
    if string.sub(flat[j], 1, 1) ~= '_' then
      local index, value = tonumber(flat[j]), tonumber(flat[j + 1])
      if (index + 1) * l.bucket <= now - l.window then
        expired[#expired + 1] = flat[j]
      else
        live[#live + 1] = {index, value}
        total = total + value
        if not low or index < low then low = index end
      end
    end
  end
  return live, expired, total, low
end

local binding, wait = 0, 0
for i = 1, n do
  local l = limits[i]
  local key = KEYS[1 + i]
  l.field = string.format('%d', math.floor(now / l.bucket))
  local meta = redis.call('HMGET', key, '_sum', '_low', l.field)
  local sum, low = tonumber(meta[1]), tonumber(meta[2])
  l.current = tonumber(meta[3]) or 0  -- the current bucket never expires, even in a recount
  local live = nil
  if sum and (low == nil or (low + 1) * l.bucket > now - l.window) then
    l.total, l.low, l.expired = sum, low, {}
  else
    local expired
    live, expired, l.total, l.low = buckets(l, key)
    l.expired, l.recount = expired, true
  end
  local excess = l.total + l.cost - l.limit
  if excess > 0 then
    if not live then
      live = buckets(l, key)
    end
    table.sort(live, function(a, b) return a[1] < b[1] end)
    local freed, at = 0, nil
    for _, b in ipairs(live) do
      freed = freed + b[2]
      if freed >= excess then
        at = (b[1] + 1) * l.bucket + l.window
        break
      end
    end
    local ms = at and (at - now) or l.window
    if binding == 0 or ms > wait then
      binding, wait = i, ms
    end
  end
end

local status = 1
if binding ~= 0 then
  status = (mode == 'shadow') and 4 or 0
  if status == 0 then
    denied(binding)
  end
end
if mode ~= 'peek' and status ~= 0 then
  local record = {'n', n, 'at', now, 'tok', token}
  for i = 1, n do
    local l = limits[i]
    local key = KEYS[1 + i]
    if #l.expired > 0 then
      redis.call('HDEL', key, unpack(l.expired))
    end
    local field = l.field
    -- One write for the bucket and the bookkeeping: every value here is below 2^53 (limits
    -- are at most 10^12), so Lua's arithmetic on them is exact.
    local writes = {}
    if l.cost > 0 then
      writes = {field, string.format('%d', l.current + l.cost), '_sum', string.format('%d', l.total + l.cost)}
    elseif l.recount then
      writes = {'_sum', string.format('%d', l.total)}
    end
    if l.recount or (l.cost > 0 and l.low == nil) then
      writes[#writes + 1] = '_low'
      writes[#writes + 1] = l.low and string.format('%d', l.low) or field
    end
    if #writes > 0 then
      redis.call('HSET', key, unpack(writes))
    end
    -- The TTL follows the newest bucket: a hash outlives its last bucket's window. A bucket
    -- that already held something set it when it was made (at most a bucket ago), so only a
    -- new bucket or a recount needs it set again: about once per bucket width, not per call.
    if l.current == 0 or l.recount then
      redis.call('PEXPIRE', key, l.window + l.bucket)
    end
    l.total = l.total + l.cost
    -- what settle needs: limit name, bucket, amount, window and bucket width
    record[#record + 1] = 'l' .. i
    record[#record + 1] = l.name .. ' ' .. field .. ' ' .. string.format('%d %d %d', l.cost, l.window, l.bucket)
  end
  redis.call('HSET', KEYS[1], unpack(record))
  redis.call('PEXPIRE', KEYS[1], ttl)
end

local reply = {status, now, binding, wait, ''}
for i = 1, n do
  local left = limits[i].limit - limits[i].total  -- total includes the cost once consumed
  reply[#reply + 1] = left > 0 and left or 0
end
return reply
