-- settle.lua: replace a reservation's estimate with what the request really used, once.
--
-- The reservation (a string written by acquire.lua: "token at|name bucket amount window_ms
-- bucket_ms|...") names, for each limit it charged, the bucket and the amount. Settling moves each
-- amount to its real value in that same bucket (a refund or an extra charge), and the
-- window's `_sum` with it; releasing moves every amount to 0. A settle may also add the
-- request's usage to the model's ledger (lib/ledger.lua) in the same call. The reservation is
-- then deleted, so a second settle or release of it (a client retry) changes nothing.
--
-- KEYS[1]   the reservation (string)
-- KEYS[1+i] the window hash of limit i (i = 1..n), every limit the reservation may name
-- ARGV[1]   now in ms, or "" to use the server's TIME (the testing clock hook)
-- ARGV[2]   n
-- ARGV[3]   the token of the acquire being settled (see acquire.lua): another token is a
--           later reservation under the same id, which this call must leave alone
-- ARGV[4 + 2*(i-1) + 0..1] limit i: name, new amount (integer >= 0)
-- Optionally, to record the usage too (as record_usage.lua does): KEYS[2+n] the model's
-- usage events, KEYS[3+n .. 6+n] its ledger's total, minute, hour and day hashes, and with a
-- tenant KEYS[7+n .. 10+n] the tenant's and KEYS[11+n] the model's tenant set;
-- ARGV[4 + 2n]       "ledger"
-- ARGV[5 + 2n .. 7 + 2n] the minute, hour and day indexes the ledger keys are named after
-- ARGV[8 + 2n]       the request id the usage event names
-- ARGV[9 + 2n]       usage event: 0 for none, else the stream's cap
-- ARGV[10 + 2n]      the tenant ("" for none)
-- ARGV[11 + 2n ..]   field, increment pairs (as in record_usage.lua)
--
-- returns {1, now_ms} settled; {0, now_ms} no such reservation (settled, released, expired,
-- or since replaced by another acquire under the same id); {2, now_ms} the ledger keys are
-- not named after the server's clock: nothing done, call again with keys named after now_ms
-- Bad arguments raise an error before anything is written.

--! include common
--! include ledger
local n = tonumber(ARGV[2])
local plain = whole(n, 0, 64) and #KEYS == 1 + n and #ARGV == 3 + 2 * n
local with_ledger = whole(n, 0, 64) and ARGV[4 + 2 * n] == 'ledger' and #ARGV >= 12 + 2 * n and #ARGV % 2 == 0
  and #KEYS == ((ARGV[10 + 2 * n] == '') and 6 or 11) + n
local cap = with_ledger and tonumber(ARGV[9 + 2 * n])
if not plain and not with_ledger then
  return redis.error_reply('ERR_ARGS expected n limits: 1 + n keys and 3 + 2n args (+ the ledger part)')
end
local now, bad_now = clock(ARGV[1])
if not now then
  return bad_now
end
local usage = nil
if with_ledger then
  local bad_pairs
  usage, bad_pairs = usage_pairs(11 + 2 * n, #ARGV)
  if not usage then
    return bad_pairs
  end
  if not whole(cap, 0, 100000000) then
    return redis.error_reply('ERR_ARGS event cap must be an integer from 0 to 100000000')
  end
  if not buckets_match(now, ARGV[5 + 2 * n], ARGV[6 + 2 * n], ARGV[7 + 2 * n]) then
    return {2, now}
  end
end
local by_name = {}
for i = 1, n do
  local name, amount = ARGV[4 + 2 * (i - 1)], tonumber(ARGV[5 + 2 * (i - 1)])
  if not whole(amount, 0, MAX) then
    return redis.error_reply('ERR_ARGS limit ' .. i .. ': amount must be an integer >= 0')
  end
  by_name[name] = {KEYS[1 + i], amount}
end

-- Anything but a record in acquire's form (a key of another type, say) is no reservation.
local found, record = pcall(redis.call, 'GET', KEYS[1])
local token, charges = nil, nil
if found and record then
  token, charges = string.match(record, '^(%S+) %d+(.*)$')
end
if not token or token ~= ARGV[3] or string.gsub(charges, '|%S+ %d+ %d+ %d+ %d+', '') ~= '' then
  return {0, now}
end
if usage then
  local tenant = ARGV[10 + 2 * n]
  -- first: an overflow leaves everything as it was
  local failed = add_usage(3 + n, ((tenant == '') and 6 or 10) + n, usage)
  if failed then
    return failed
  end
  note_usage(KEYS[2 + n], cap, ARGV[8 + 2 * n], tenant, KEYS[11 + n], usage)
end
for name, b, c, w, z in string.gmatch(charges, '|(%S+) (%d+) (%d+) (%d+) (%d+)') do
  local target = by_name[name]
  local bucket, cost, window, size = tonumber(b), tonumber(c), tonumber(w), tonumber(z)
  -- A limit the caller no longer passes, or a bucket that has left its window: nothing to move.
  if target and (bucket + 1) * size > now - window then
    local delta = target[2] - cost
    local field = string.format('%d', bucket)
    local held = tonumber(redis.call('HGET', target[1], field)) or 0
    if held + delta < 0 then
      delta = -held  -- never below zero (a bucket already corrected by hand, say)
    end
    if delta ~= 0 then
      if held + delta == 0 then
        redis.call('HDEL', target[1], field)
      else
        redis.call('HINCRBY', target[1], field, delta)
      end
      redis.call('HINCRBY', target[1], '_sum', delta)  -- the live total acquire reads
      local low = tonumber(redis.call('HGET', target[1], '_low'))
      if held == 0 and (low == nil or bucket < low) then
        redis.call('HSET', target[1], '_low', field)  -- a bucket made by this settle
      end
      redis.call('PEXPIRE', target[1], window + size)
    end
  end
end
redis.call('DEL', KEYS[1])
return {1, now}
