-- settle.lua: replace a reservation's estimate with what the request really used, once.
--
-- The client's handle says what the acquire charged (acquire.lua writes nothing for a request
-- without a caller-given id): for each limit, the bucket and the amount. Settling moves each
-- amount to its real value in that same bucket (a refund or an extra charge), and the
-- window's `_sum` with it; releasing moves every amount to 0. A settle may also add the
-- request's usage to the model's ledger (lib/ledger.lua) in the same call. A marker named
-- after the acquire's token (new for each acquire) is written first, with what is left of the
-- reservation TTL, so a second settle or release of the same acquire (a client retry, a copy
-- of the handle) changes nothing; a settle after the TTL finds nothing to do either.
--
-- KEYS[1]   the settle marker of the acquire ("...:s:<token>"), a string written here
-- KEYS[2]   its reservation id ("...:r:<id>"): with a caller-given id, the record acquire.lua
--           wrote, deleted here if it still holds this token (the id is free again); named
--           after the token itself (no caller-given id): not looked at
-- KEYS[2+i] the window hash of charge i (i = 1..n)
-- ARGV[1]   now in ms, or "" to use the server's TIME (the testing clock hook)
-- ARGV[2]   n, the charges
-- ARGV[3]   the acquire's token (1 to 64 characters, no spaces or |)
-- ARGV[4]   when it was admitted (the server's ms in acquire's reply)
-- ARGV[5]   the reservation TTL in ms (at most 30 days)
-- ARGV[6]   this call's nonce (1 to 32 letters and digits), kept in the marker: the same call
--           sent again (a reply lost, then re-sent by the client's own retry) is told it
--           settled, where another call for the same acquire is told it did not
-- ARGV[7 + 6*(i-1) + 0..5] charge i: limit name, bucket index, amount charged, window_ms,
--           bucket_ms, new amount (integers >= 0)
-- Optionally, to record the usage too (as record_usage.lua does): KEYS[3+n] the model's
-- usage events, KEYS[4+n .. 7+n] its ledger's total, minute, hour and day hashes, and with a
-- tenant KEYS[8+n .. 11+n] the tenant's and KEYS[12+n] the model's tenant set;
-- ARGV[7 + 6n]       "ledger"
-- ARGV[8 + 6n .. 10 + 6n] the minute, hour and day indexes the ledger keys are named after
-- ARGV[11 + 6n]      the request id the usage event names
-- ARGV[12 + 6n]      usage event: 0 for none, else the stream's cap
-- ARGV[13 + 6n]      the tenant ("" for none)
-- ARGV[14 + 6n ..]   field, increment pairs (as in record_usage.lua)
--
-- returns {1, now_ms} settled (by this call, or by this very call sent before); {0, now_ms}
-- nothing to settle (settled or released already by another call, or the reservation TTL has
-- passed); {2, now_ms} the ledger keys are not named after the server's clock: nothing done,
-- call again with keys named after now_ms
-- Bad arguments raise an error before anything is written.

--! include common
--! include ledger
local n = tonumber(ARGV[2])
local plain = whole(n, 0, 64) and #KEYS == 2 + n and #ARGV == 6 + 6 * n
local with_ledger = whole(n, 0, 64) and ARGV[7 + 6 * n] == 'ledger' and #ARGV >= 15 + 6 * n and #ARGV % 2 == 1
  and #KEYS == ((ARGV[13 + 6 * n] == '') and 7 or 12) + n
local cap = with_ledger and tonumber(ARGV[12 + 6 * n])
if not plain and not with_ledger then
  return redis.error_reply('ERR_ARGS expected n charges: 2 + n keys and 6 + 6n args (+ the ledger part)')
end
if not distinct_keys() then
  return redis.error_reply('ERR_ARGS a key is given twice')
end
local token, at, ttl = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
if token == '' or #token > 64 or string.find(token, '[%s|]') then
  return redis.error_reply('ERR_ARGS token must be 1 to 64 characters, no spaces or |')
end
local nonce = ARGV[6]
if not string.find(nonce, '^%w+$') or #nonce > 32 then
  return redis.error_reply('ERR_ARGS nonce must be 1 to 32 letters and digits')
end
if not whole(at, 0, MAX) or not whole(ttl, 1, 2592000000) then
  return redis.error_reply('ERR_ARGS admitted-at must be an integer >= 0 (ms), ttl from 1 to 2592000000 ms')
end
local now, bad_now = clock(ARGV[1])
if not now then
  return bad_now
end
local usage = nil
if with_ledger then
  local bad_pairs
  usage, bad_pairs = usage_pairs(14 + 6 * n, #ARGV)
  if not usage then
    return bad_pairs
  end
  if not whole(cap, 0, 100000000) then
    return redis.error_reply('ERR_ARGS event cap must be an integer from 0 to 100000000')
  end
end
local charges = {}
for i = 1, n do
  local base = 7 + 6 * (i - 1)
  local name, bucket, cost, window, size, amount = ARGV[base], tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2]),
    tonumber(ARGV[base + 3]), tonumber(ARGV[base + 4]), tonumber(ARGV[base + 5])
  if not (whole(bucket, 0, MAX) and whole(cost, 0, MAX) and whole(window, 0, MAX) and whole(size, 1, MAX)
      and whole(amount, 0, MAX)) then
    return redis.error_reply('ERR_ARGS charge ' .. i .. ': numbers must be integers >= 0 (bucket width >= 1)')
  end
  if name == '' or string.find(name, '[%s|]') then
    return redis.error_reply('ERR_ARGS charge ' .. i .. ': bad name')
  end
  charges[i] = {KEYS[2 + i], bucket, cost, window, size, amount}
end
-- The same call sent again: it settled the first time (its marker holds this nonce).
local mark = redis.call('GET', KEYS[1])
if mark then
  return {(mark == nonce) and 1 or 0, now}
end
if with_ledger and not buckets_match(now, ARGV[8 + 6 * n], ARGV[9 + 6 * n], ARGV[10 + 6 * n]) then
  return {2, now}
end

-- Read first, write after: a window of the wrong type fails the call before anything changes.
local moves = {}
for _, c in ipairs(charges) do
  local key, bucket, cost, window, size, amount = c[1], c[2], c[3], c[4], c[5], c[6]
  -- A bucket that has left its window: nothing to move.
  if (bucket + 1) * size > now - window and amount ~= cost then
    local field = string.format('%d', bucket)
    local got = redis.call('HMGET', key, field, '_low')
    moves[#moves + 1] = {key, field, bucket, amount - cost, tonumber(got[1]) or 0, tonumber(got[2]), window + size}
  end
end

local new_tenant = usage and check_notes(KEYS[3 + n], cap, ARGV[13 + 6 * n], KEYS[12 + n])

-- Once per acquire, and not after its TTL: the marker lives as long as the reservation would.
local left = at + ttl - now
if left <= 0 then
  return {0, now}
end
redis.call('SET', KEYS[1], nonce, 'PX', math.min(left, ttl))
if usage then
  local tenant = ARGV[13 + 6 * n]
  -- first: an overflow leaves everything as it was (the marker is taken back)
  local failed = add_usage(4 + n, ((tenant == '') and 7 or 11) + n, usage)
  if failed then
    redis.call('DEL', KEYS[1])
    return failed
  end
  note_usage(KEYS[3 + n], cap, ARGV[11 + 6 * n], tenant, KEYS[12 + n], usage, new_tenant)
end
if string.sub(KEYS[2], -(#token + 3)) ~= ':r:' .. token then
  -- A caller-given id: free it, unless it now names a later acquire (this handle is stale).
  local ok, record = pcall(redis.call, 'GET', KEYS[2])
  if ok and record and string.match(record, '^(%S+)') == token then
    redis.call('DEL', KEYS[2])
  end
end
for _, m in ipairs(moves) do
  local key, field, bucket, delta, held, low, keep = m[1], m[2], m[3], m[4], m[5], m[6], m[7]
  if held + delta < 0 then
    delta = -held  -- never below zero (a bucket already corrected by hand, say)
  end
  if delta ~= 0 then
    if held + delta == 0 then
      redis.call('HDEL', key, field)
    else
      redis.call('HINCRBY', key, field, delta)
    end
    redis.call('HINCRBY', key, '_sum', delta)  -- the live total acquire reads
    if held == 0 and (low == nil or bucket < low) then
      redis.call('HSET', key, '_low', field)  -- a bucket made by this settle
    end
    redis.call('PEXPIRE', key, keep)
  end
end
return {1, now}
