-- budget_settle.lua: end a request's hold on its tenant's budgets, once: release the held
-- estimate and (settle) add the real cost to each budget's spend, announcing each threshold
-- the spend reaches for the first time in the period; or (release) add nothing. "spend" adds
-- a cost that was never held (record_usage: the ledger's request id made it count once).
--
-- A hold that already lapsed (lib/budget.lua) is not released twice, but a late settle still
-- adds its cost: the record outlives the hold by a day for that.
--
-- KEYS[1]    the hold record (hash, written by budget_reserve.lua)
-- KEYS[1+i]  the spend hash of budget i (i = 1..n): the keys the record names, in order
-- KEYS[2+n]  the tenant's budget events (stream)
-- ARGV[1]    now in ms, or "" to use the server's TIME
-- ARGV[2]    the token of the acquire being settled
-- ARGV[3]    "settle" | "release" | "spend" (no hold: KEYS[1] is not read)
-- ARGV[4]    the real cost in units (integer string >= 0; ignored by release)
-- ARGV[5]    n
-- ARGV[6]    events stream cap (approximate MAXLEN)
-- ARGV[7]    the tenant, ARGV[8] the currency, ARGV[9] the request id (for the events)
-- ARGV[10 + 6*(i-1) + 0..5] budget i: scope, period, period index, amount in units ("" if
--            the budget is gone: no threshold), thresholds "pct:units pct:units ..." (units
--            of spend that reach each percentage; "" for none), keep ms (the spend hash's TTL)
--
-- returns {1, now_ms, events} settled or released, with the number of threshold events
--         raised; {0, now_ms, 0} no such hold (settled, released, lapsed a day ago, or
--         held under another token)
-- Bad arguments raise an error before anything is written.

--! include common
--! include budget
local n = tonumber(ARGV[5])
if not whole(n, 1, 16) or #KEYS ~= 2 + n or #ARGV ~= 9 + 6 * n then
  return redis.error_reply('ERR_ARGS expected n budgets: 2 + n keys and 9 + 6n args')
end
if not distinct_keys() then
  return redis.error_reply('ERR_ARGS a key is given twice')
end
local token, mode, cost, cap = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[6])
if mode ~= 'settle' and mode ~= 'release' and mode ~= 'spend' then
  return redis.error_reply('ERR_ARGS unknown mode ' .. tostring(mode))
end
if not string.match(cost, '^%d+$') or not whole(tonumber(cost), 0, MAX) then
  return redis.error_reply('ERR_ARGS cost must be an integer from 0 to 2^53 - 1')
end
if not whole(cap, 1, 100000000) then
  return redis.error_reply('ERR_ARGS stream cap must be an integer from 1 to 100000000')
end
local now, bad_now = clock(ARGV[1])
if not now then
  return bad_now
end
local budgets = {}
for i = 1, n do
  local base = 10 + 6 * (i - 1)
  local b = {scope = ARGV[base], period = ARGV[base + 1], index = ARGV[base + 2], amount = ARGV[base + 3], marks = {},
    keep = tonumber(ARGV[base + 5])}
  if b.amount ~= '' and not string.match(b.amount, '^%d+$') then
    return redis.error_reply('ERR_ARGS budget ' .. i .. ': amount must be an integer or ""')
  end
  if not whole(b.keep, 1, MAX) then
    return redis.error_reply('ERR_ARGS budget ' .. i .. ': keep must be a positive integer (ms)')
  end
  for pct, units in string.gmatch(ARGV[base + 4], '(%d+):(%d+)') do
    b.marks[#b.marks + 1] = {pct, tonumber(units)}
  end
  budgets[i] = b
end

if mode ~= 'spend' then
  local record = redis.call('HMGET', KEYS[1], 'tok', 'keys')
  if record[1] ~= token then
    return {0, now, 0}
  end
  local names = {}
  for i = 1, n do names[i] = KEYS[1 + i] end
  if record[2] ~= table.concat(names, '\n') then
    return redis.error_reply('ERR_ARGS the spend keys differ from the ones the hold names')
  end
end

-- Nothing is written if a spend would pass what a Redis integer holds (2^63 - 1).
local announces = false
for i = 1, n do
  if (tonumber(redis.call('HGET', KEYS[1 + i], 'spent')) or 0) + tonumber(cost) >= 9.2e18 then
    return redis.error_reply('ERR_OVERFLOW spent of ' .. KEYS[1 + i] .. ' would overflow; nothing recorded')
  end
  announces = announces or (budgets[i].amount ~= '' and #budgets[i].marks > 0)
end
if announces and mode ~= 'release' and cost ~= '0' then
  redis.call('XLEN', KEYS[2 + n])  -- read before any write: a stream of the wrong type fails here
end

local raised = 0
for i = 1, n do
  local key, b = KEYS[1 + i], budgets[i]
  local hold = mode ~= 'spend' and redis.call('HGET', key, 'h:' .. token)
  if hold then
    local units = string.match(hold, ' (%d+)$')
    redis.call('HDEL', key, 'h:' .. token)
    unhold(key, units)
  end
  live_held(key, now, true)
  if mode ~= 'release' and cost ~= '0' then
    local spent = redis.call('HINCRBY', key, 'spent', cost)
    if b.amount ~= '' then
      for _, mark in ipairs(b.marks) do
        -- spent is exact below 2^53, and beyond it larger than every mark (all below 2^53)
        if spent >= mark[2] and redis.call('HSETNX', key, 't:' .. mark[1], now) == 1 then
          redis.call('XADD', KEYS[2 + n], 'MAXLEN', '~', cap, '*',
            'type', 'budget.threshold', 'tenant', ARGV[7], 'scope', b.scope, 'period', b.period,
            'index', b.index, 'threshold', mark[1], 'amount_units', b.amount,
            'spent_units', redis.call('HGET', key, 'spent'), 'currency', ARGV[8], 'request_id', ARGV[9])
          raised = raised + 1
        end
      end
    end
  end
  redis.call('PEXPIRE', key, b.keep)  -- after the writes: a hash made by them gets it too
end
if mode ~= 'spend' then
  redis.call('DEL', KEYS[1])
end
return {1, now, raised}
