-- settle.lua: replace a reservation's estimate with what the request really used, once.
--
-- The reservation (written by acquire.lua) names, for each limit it charged (field l<i>:
-- "name bucket amount window_ms bucket_ms"), the bucket and the amount. Settling moves each amount to its real value in that same bucket (a refund or
-- an extra charge), and the window's `_sum` with it; releasing moves every amount to 0. The reservation is then deleted, so
-- a second settle or release of it (a client retry) changes nothing.
--
-- KEYS[1]   the reservation (hash)
-- KEYS[1+i] the window hash of limit i (i = 1..n), every limit the reservation may name
-- ARGV[1]   now in ms, or "" to use the server's TIME (the testing clock hook)
-- ARGV[2]   n
-- ARGV[3 + 2*(i-1) + 0..1] limit i: name, new amount (integer >= 0)
--
-- returns {1, now_ms} settled; {0, now_ms} no such reservation (settled, released or expired)
-- Bad arguments raise an error before anything is written.

local n = tonumber(ARGV[2])
if not n or n < 0 or n ~= math.floor(n) or #KEYS ~= 1 + n or #ARGV ~= 2 + 2 * n then
  return redis.error_reply('ERR_ARGS expected n limits: 1 + n keys and 2 + 2n args')
end
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
else
  now = tonumber(ARGV[1])
  if not now or now < 0 or now ~= math.floor(now) then
    return redis.error_reply('ERR_ARGS now must be a non-negative integer (ms)')
  end
end
local by_name = {}
for i = 1, n do
  local name, amount = ARGV[3 + 2 * (i - 1)], tonumber(ARGV[4 + 2 * (i - 1)])
  if not amount or amount < 0 or amount ~= math.floor(amount) or amount > 9007199254740991 then
    return redis.error_reply('ERR_ARGS limit ' .. i .. ': amount must be an integer >= 0')
  end
  by_name[name] = {KEYS[1 + i], amount}
end

local record = redis.call('HGETALL', KEYS[1])
if #record == 0 then
  return {0, now}
end
local fields = {}
for j = 1, #record, 2 do
  fields[record[j]] = record[j + 1]
end
local charged = tonumber(fields['n']) or 0
for i = 1, charged do
  local name, b, c, w, z = string.match(fields['l' .. i] or '', '^(%S+) (%d+) (%d+) (%d+) (%d+)$')
  local target = by_name[name or '']
  local bucket, cost, window, size = tonumber(b), tonumber(c), tonumber(w), tonumber(z)
  -- A limit the caller no longer passes, or a bucket that has left its window: nothing to move.
  if target and (bucket + 1) * size > now - window then
    local delta = target[2] - cost
    local field = string.format('%d', bucket)
    local held = tonumber(redis.call('HGET', target[1], field))
    -- A bucket already gone (its window key expired) has nothing left to correct.
    if delta ~= 0 and held then
      if held + delta < 0 then
        delta = -held
      end
      if held + delta == 0 then
        redis.call('HDEL', target[1], field)
      else
        redis.call('HINCRBY', target[1], field, delta)
      end
      redis.call('HINCRBY', target[1], '_sum', delta)  -- the live total acquire reads
      redis.call('PEXPIRE', target[1], window + size)
    end
  end
end
redis.call('DEL', KEYS[1])
return {1, now}
