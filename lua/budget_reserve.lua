-- budget_reserve.lua: hold a request's estimated cost on every budget it counts against, or
-- on none (a tenant's budgets share the tenant's hash tag).
--
-- A budget admits the request when spent + held + estimate <= amount, counting only holds
-- that have not expired (lib/budget.lua). The hold is released by budget_settle.lua (which
-- then adds the real cost to spent), or lapses after the hold TTL.
--
-- KEYS[1]    the request's hold record (hash), kept the TTL plus a day so a late settle is
--            still counted once
-- KEYS[1+i]  the spend hash of budget i's current period (i = 1..n)
-- ARGV[1]    now in ms, or "" to use the server's TIME
-- ARGV[2]    mode: "acquire" | "shadow" (hold, never refuse) | "peek" (write nothing)
-- ARGV[3]    hold TTL in ms (1 to 30 days)
-- ARGV[4]    this acquire's token (1 to 64 characters)
-- ARGV[5]    the estimate in units (integer, 0 to 2^53 - 1)
-- ARGV[6]    n, the number of budgets (1 to 16)
-- ARGV[7 + 4*(i-1) + 0..3] budget i: amount (units), keep ms (the spend hash's TTL),
--            period start ms, period end ms (the period the spend key is named after)
--
-- returns {status, now_ms, binding, wait_ms, token, spent_1, held_1, ..., spent_n, held_n}
--   status 1 held, 0 refused by budget `binding` (wait_ms: until its period ends, when the
--   spend alone leaves no room; else 1000, as settles may free held estimates), 2 already
--   held under this record (token: the holder's), 3 the estimate exceeds budget `binding`'s
--   amount, 4 shadow: held although budget `binding` would have refused, 5 the period bounds
--   do not contain the server's time: name the keys after now_ms and call again.
--   spent and held are integer strings, after this call.
-- Bad arguments raise an error before anything is written.

--! include common
--! include budget
local n = tonumber(ARGV[6])
if not whole(n, 1, 16) or #KEYS ~= 1 + n or #ARGV ~= 6 + 4 * n then
  return redis.error_reply('ERR_ARGS expected n budgets: 1 + n keys and 6 + 4n args')
end
if not distinct_keys() then
  return redis.error_reply('ERR_ARGS a key is given twice')
end
local mode, ttl, token, estimate = ARGV[2], tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
if mode ~= 'acquire' and mode ~= 'shadow' and mode ~= 'peek' then
  return redis.error_reply('ERR_ARGS unknown mode ' .. tostring(mode))
end
if not whole(ttl, 1, 2592000000) then
  return redis.error_reply('ERR_ARGS hold ttl must be an integer from 1 to 2592000000 ms')
end
if token == '' or #token > 64 or string.find(token, '%s') then
  return redis.error_reply('ERR_ARGS token must be 1 to 64 characters without spaces')
end
if not whole(estimate, 0, MAX) or not string.match(ARGV[5], '^%d+$') then
  return redis.error_reply('ERR_ARGS estimate must be an integer from 0 to 2^53 - 1')
end
local now, bad_now = clock(ARGV[1])
if not now then
  return bad_now
end
local budgets = {}
for i = 1, n do
  local base = 7 + 4 * (i - 1)
  local amount, keep, first, last = tonumber(ARGV[base]), tonumber(ARGV[base + 1]),
    tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3])
  if not (whole(amount, 1, MAX) and whole(keep, 1, MAX) and whole(first, 0, MAX) and whole(last, 0, MAX))
    or first >= last then
    return redis.error_reply('ERR_ARGS budget ' .. i .. ': amount, keep, start and end must be integers, start < end')
  end
  budgets[i] = {amount = amount, keep = keep, first = first, last = last}
end
for i = 1, n do
  if now < budgets[i].first or now >= budgets[i].last then
    return {5, now, i, 0, ''}
  end
end

local function reply(status, binding, wait, tok)
  local out = {status, now, binding, wait, tok}
  for i = 1, n do
    local got = redis.call('HMGET', KEYS[1 + i], 'spent', 'held')
    out[#out + 1] = got[1] or '0'
    out[#out + 1] = got[2] or '0'
  end
  return out
end

local held_by = mode ~= 'peek' and redis.call('HGET', KEYS[1], 'tok')
if held_by then
  return reply(2, 0, 0, held_by)
end
-- Every spend hash is read before any is written: one of the wrong type fails the call here.
local spent = {}
for i = 1, n do
  spent[i] = tonumber(redis.call('HGET', KEYS[1 + i], 'spent')) or 0
end
-- A refusal of an acquire is counted on the refusing budget's period (a peek writes nothing).
local function denied(i)
  if mode == 'acquire' then
    redis.call('HINCRBY', KEYS[1 + i], 'denied', 1)
    redis.call('PEXPIRE', KEYS[1 + i], budgets[i].keep)
  end
end

for i = 1, n do
  if estimate > budgets[i].amount then
    denied(i)
    return reply(3, i, -1, '')
  end
end

local binding, wait = 0, 0
for i = 1, n do
  local b = budgets[i]
  local held = live_held(KEYS[1 + i], now, mode ~= 'peek')
  if spent[i] + held + estimate > b.amount then
    -- Sums of money below 2^53 are exact; a larger one is larger than any amount anyway.
    local ms = (spent[i] + estimate > b.amount) and (b.last - now) or 1000
    if binding == 0 or ms > wait then
      binding, wait = i, ms
    end
  end
end
local status = 1
if binding ~= 0 then
  status = (mode == 'shadow') and 4 or 0
  denied(binding)
end
if mode ~= 'peek' and status ~= 0 then
  local expires = string.format('%d', now + ttl)
  local names = {}
  for i = 1, n do
    local key = KEYS[1 + i]
    redis.call('HINCRBY', key, 'held', ARGV[5])
    redis.call('HSET', key, 'h:' .. token, expires .. ' ' .. ARGV[5])
    local next_at = tonumber(redis.call('HGET', key, 'next'))
    if not next_at or now + ttl < next_at then
      redis.call('HSET', key, 'next', expires)
    end
    redis.call('PEXPIRE', key, budgets[i].keep)
    names[i] = key
  end
  redis.call('HSET', KEYS[1], 'tok', token, 'est', ARGV[5], 'keys', table.concat(names, '\n'))
  redis.call('PEXPIRE', KEYS[1], ttl + 86400000)
end
return reply(status, binding, wait, '')
