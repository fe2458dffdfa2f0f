-- acquire.lua: check every limit of a request and consume all of them, or none; for one
-- request, or for several requests of the same model and limits taken in order (what the
-- asyncio client's auto-batching sends), each admitted exactly as if it had come alone.
--
-- Sliding windows of sub-window buckets: a limit's hash maps a bucket index
-- (floor(time_ms / bucket_ms)) to what was admitted in it, and keeps `_sum` and `_low`
-- (the total of its live buckets and the oldest one) so that most calls read two fields. At time `now` the window
-- (now - window_ms, now] counts every bucket that overlaps it in full, so a partly expired
-- bucket still counts: the error only ever refuses early (by at most one bucket), never
-- admits more than the limit in any interval of window_ms.
--
-- KEYS[1]...KEYS[n]  the window hash of limit i at KEYS[i] (i = 1..n); all keys share the model's hash tag
-- KEYS[n+1]     the model's denial counters (hash: limit name -> refusals), counted on each
--               refusal of an acquire (status 0 or 3), never by a peek
-- KEYS[n+1+j]   the reservation id of request j (j = 1..m): "...:r:<id>". With a caller-given id
--               (not the request's own token) it is looked up and, when admitted, written: a
--               string "token at|name bucket amount window_ms bucket_ms|..." (one part per limit)
--               with the reservation TTL, so that a retry under that id is admitted once. A
--               reservation named after the request's own token (new for each call) cannot exist
--               yet: it is neither looked up nor written, the client's handle knows what it holds.
-- ARGV[1]   now in ms, or "" to use the server's TIME (the testing clock hook)
-- ARGV[2]   mode: "acquire" | "shadow" (count, never refuse) | "peek" (write nothing)
-- ARGV[3]   reservation TTL in ms (at most 30 days)
-- ARGV[4]   n, the number of limits
-- ARGV[5]   m, the number of requests (1 to 1024)
-- ARGV[6 + 4*(i-1) + 0..3]  limit i: name, limit, window_ms, bucket_ms
-- then for each request j, 1 + n values: its token (new for each call), then its cost on
--           each limit.
--
-- returns {now_ms, then for each request: status, binding, retry_after_ms, record,
--          remaining_1, ..., remaining_n}
--   record is, for status 2, what the reservation id holds (the admitted request's token, time
--   and charges, as above), else "". An admitted request charged limit i's bucket
--   floor(now_ms / bucket_ms) with its cost.
--   status 1 admitted, 0 refused, 2 already admitted under this reservation (nothing
--   consumed again), 3 refused for good: cost of limit `binding` exceeds the limit itself,
--   4 shadow: admitted although limit `binding` would have refused.
--   binding is the index of the limit that refuses longest (0: none).
-- Bad arguments raise an error before anything is written.

local n, m = tonumber(ARGV[4]), tonumber(ARGV[5])
--! include common
if not whole(n, 0, 64) or not whole(m, 1, 1024) or #KEYS ~= 1 + n + m or #ARGV ~= 5 + 4 * n + m * (1 + n) then
  return redis.error_reply('ERR_ARGS expected n limits and m requests: n + 1 + m keys and 5 + 4n + m(1 + n) args')
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
  local base = 6 + 4 * (i - 1)
  local name, limit, window, bucket = ARGV[base], tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2]),
    tonumber(ARGV[base + 3])
  if not (whole(limit, 0, MAX) and whole(window, 0, MAX) and whole(bucket, 0, MAX)) then
    return redis.error_reply('ERR_ARGS limit ' .. i .. ': numbers must be integers >= 0')
  end
  if name == '' or string.find(name, '[%s|]') then
    return redis.error_reply('ERR_ARGS limit ' .. i .. ': bad name')
  end
  if bucket < 1 or window < bucket or window % bucket ~= 0 then
    return redis.error_reply('ERR_ARGS limit ' .. i .. ': window must be a multiple of the bucket')
  end
  local index = (now - now % bucket) / bucket
  limits[i] = {name = name, limit = limit, window = window, bucket = bucket, index = index,
    field = string.format('%d', index), added = 0, denied = 0, at = i}
end
local requests = {}
for j = 1, m do
  local at = 6 + 4 * n + (j - 1) * (1 + n)
  local token = ARGV[at]
  if token == '' or #token > 64 or string.find(token, '[%s|]') then
    return redis.error_reply('ERR_ARGS request ' .. j .. ': token must be 1 to 64 characters, no spaces or |')
  end
  local costs = {}
  for i = 1, n do
    local cost = tonumber(ARGV[at + i])
    if not whole(cost, 0, MAX) then
      return redis.error_reply('ERR_ARGS request ' .. j .. ', limit ' .. i .. ': cost must be an integer >= 0')
    end
    costs[i] = cost
  end
  local key = KEYS[n + 1 + j]
  -- named after its own token (new for each call): no reservation can hold it yet
  requests[j] = {token = token, costs = costs, key = key, fresh = string.sub(key, -(#token + 3)) == ':r:' .. token}
end

-- Count each window once. Fast path: the hash keeps `_sum` (what its live buckets hold) and
-- `_low` (its oldest bucket); while that bucket is still in the window, nothing expired and
-- the total is `_sum`. Otherwise (about once per bucket width) read every bucket, drop the
-- expired ones and recount. A refusal reads the buckets to find when the request fits. A field
-- that is not a bucket (no script writes one: a hand edit) is dropped with the expired ones.
local function buckets(l, key)
  local flat = redis.call('HGETALL', key)
  local older, expired, total, low = {}, {}, 0, nil
  for j = 1, #flat, 2 do
    if string.sub(flat[j], 1, 1) ~= '_' then
      local index, value = tonumber(flat[j]), tonumber(flat[j + 1])
      if not index or not value or (index + 1) * l.bucket <= now - l.window then
        expired[#expired + 1] = flat[j]
      else
        if index ~= l.index then older[#older + 1] = {index, value} end
        total = total + value
        if not low or index < low then low = index end
      end
    end
  end
  return older, expired, total, low
end

for i = 1, n do
  local l = limits[i]
  local meta = redis.call('HMGET', KEYS[i], '_sum', '_low', l.field)
  local sum, low = tonumber(meta[1]), tonumber(meta[2])
  l.current = tonumber(meta[3]) or 0  -- the current bucket never expires, even in a recount
  l.was = l.current
  if sum and (low == nil or (low + 1) * l.bucket > now - l.window) then
    l.total, l.low = sum, low
  else
    l.older, l.expired, l.total, l.low = buckets(l, KEYS[i])
    l.recount = true
  end
end

-- When `excess` more of limit l will have left the window: its buckets, oldest first.
local function retry_ms(l, excess)
  if not l.older then
    l.older = buckets(l, KEYS[l.at])
  end
  local live = {{l.index, l.current}}
  for _, b in ipairs(l.older) do live[#live + 1] = b end
  table.sort(live, function(a, b) return a[1] < b[1] end)
  local freed = 0
  for _, b in ipairs(live) do
    freed = freed + b[2]
    if freed >= excess then
      return (b[1] + 1) * l.bucket + l.window - now
    end
  end
  return l.window
end

local reply = {now}
local consumed = false
local held = {}  -- reservation key -> the record stored under it (false: none), as this call goes
local writes = {}  -- {key, record} of each admitted request with a caller-given id
for j = 1, m do
  local q = requests[j]
  local status, binding, wait, stored = 1, 0, 0, ''
  for i = 1, n do
    if q.costs[i] > limits[i].limit then  -- too large ever to be admitted
      status, binding, wait = 3, i, -1
      break
    end
  end
  if status == 1 then
    for i = 1, n do
      local l = limits[i]
      local excess = l.total + q.costs[i] - l.limit
      if excess > 0 then
        local ms = retry_ms(l, excess)
        if binding == 0 or ms > wait then
          binding, wait = i, ms
        end
      end
    end
    if binding ~= 0 then
      status = (mode == 'shadow') and 4 or 0
    end
  end
  if mode ~= 'peek' then
    -- Idempotent: a retried acquire of the same reservation consumes nothing again. Only reads
    -- here (a key of the wrong type fails the call before anything is written); the
    -- reservations are written with the windows, at the end.
    local prior = held[q.key]
    if prior == nil and not q.fresh then
      prior = redis.call('GET', q.key)
      held[q.key] = prior
    end
    if prior then
      status, binding, wait, stored = 2, 0, 0, prior
    elseif status == 1 or status == 4 then
      consumed = true
      for i = 1, n do
        local l, cost = limits[i], q.costs[i]
        l.total, l.current, l.added = l.total + cost, l.current + cost, l.added + cost
      end
      if not q.fresh then  -- a caller-given id: remember what it was admitted with
        local parts = {q.token, ' ', string.format('%d', now)}
        for i = 1, n do
          local l = limits[i]
          parts[#parts + 1] = string.format('|%s %s %d %d %d', l.name, l.field, q.costs[i], l.window, l.bucket)
        end
        local record = table.concat(parts)
        writes[#writes + 1] = {q.key, record}
        held[q.key] = record  -- the same id again in this call is a repeat of this one
      end
    elseif binding ~= 0 then
      limits[binding].denied = limits[binding].denied + 1  -- the limit that refused it
    end
  end
  reply[#reply + 1] = status
  reply[#reply + 1] = binding
  reply[#reply + 1] = wait
  reply[#reply + 1] = stored
  for i = 1, n do
    local left = limits[i].limit - limits[i].total  -- the total includes the cost once consumed
    reply[#reply + 1] = (status == 2 or status == 3) and -1 or (left > 0 and left or 0)
  end
end

-- Writes. The denial counters (read by nothing above) go first: a key of the wrong type there
-- fails the call before anything else is written; the records last, as SET never fails.
for i = 1, n do
  if limits[i].denied > 0 then
    redis.call('HINCRBY', KEYS[n + 1], limits[i].name, limits[i].denied)
  end
end
for i = 1, n do
  local l = limits[i]
  local key = KEYS[i]
  if consumed then
    if l.expired and #l.expired > 0 then
      redis.call('HDEL', key, unpack(l.expired))
    end
    -- One write for the bucket and the bookkeeping: every value here is below 2^53 (limits
    -- are at most 2^53 - 1 and so are the totals admitted under them), so Lua is exact.
    local fields = {}
    if l.added > 0 then
      fields = {l.field, string.format('%d', l.current), '_sum', string.format('%d', l.total)}
    elseif l.recount then
      fields = {'_sum', string.format('%d', l.total)}
    end
    if l.recount or (l.added > 0 and l.low == nil) then
      fields[#fields + 1] = '_low'
      fields[#fields + 1] = l.low and string.format('%d', l.low) or l.field
    end
    if #fields > 0 then
      redis.call('HSET', key, unpack(fields))
    end
    -- The TTL follows the newest bucket: a hash outlives its last bucket's window. A bucket
    -- that already held something set it when it was made (at most a bucket ago), so only a
    -- new bucket or a recount needs it set again: about once per bucket width, not per call.
    if (l.was == 0 and l.added > 0) or l.recount then
      redis.call('PEXPIRE', key, l.window + l.bucket)
    end
  end
end
for _, w in ipairs(writes) do
  redis.call('SET', w[1], w[2], 'PX', ttl)
end
return reply
