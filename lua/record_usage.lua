-- record_usage.lua: add one request's usage to a model's ledger counters, once.
--
-- Counters live in hashes under the model's hash tag: all-time totals and UTC minute, hour
-- and day buckets, for the model and (when given) for the tenant on that model. Money comes
-- in as integer units (see registry/ledger/money.py) and is only ever added by HINCRBY, so
-- no amount passes through a Lua number.
--
-- KEYS[1]   the request id's marker (string), set NX with a TTL when ARGV[6] is "1"
-- KEYS[2..5] the model's total, minute, hour and day hashes
-- KEYS[6..9] the tenant's (optional: present when #KEYS == 9)
-- ARGV[1]   now in ms, or "" to use the server's TIME (the testing clock hook)
-- ARGV[2..4] the minute, hour and day indexes the client named the bucket keys after
-- ARGV[5]   the request id marker's TTL in ms
-- ARGV[6]   "1" when the request has an id (idempotent), else "0"
-- ARGV[7..] field, increment pairs (integer strings; fields plain names)
--
-- returns {1, now_ms} recorded; {0, now_ms} already recorded under this request id;
--         {2, now_ms} the bucket indexes disagree with the server's clock: name the keys
--         after now_ms and call again. A counter that would overflow raises an error after
--         undoing what this call added.
--! include common

if (#KEYS ~= 5 and #KEYS ~= 9) or #ARGV < 6 or #ARGV % 2 ~= 0 then
  return redis.error_reply('ERR_ARGS expected 5 or 9 keys and 6 + 2k args')
end
local now, bad_now = clock(ARGV[1])
if not now then
  return bad_now
end
local ttl = tonumber(ARGV[5])
if not whole(ttl, 1, 2592000000) then
  return redis.error_reply('ERR_ARGS id ttl must be an integer from 1 to 2592000000 ms')
end
if ARGV[6] ~= '0' and ARGV[6] ~= '1' then
  return redis.error_reply('ERR_ARGS has-id flag must be 0 or 1')
end
local pairs_ = {}
for j = 7, #ARGV, 2 do
  local field, by = ARGV[j], ARGV[j + 1]
  if field == '' or not string.match(by, '^%-?%d+$') or #by > 19 then
    return redis.error_reply('ERR_ARGS increment ' .. tostring(field) .. ' must be an integer')
  end
  pairs_[#pairs_ + 1] = {field, by}
end
local minute, hour, day = math.floor(now / 60000), math.floor(now / 3600000), math.floor(now / 86400000)
if tonumber(ARGV[2]) ~= minute or tonumber(ARGV[3]) ~= hour or tonumber(ARGV[4]) ~= day then
  return {2, now}
end
if ARGV[6] == '1' and not redis.call('SET', KEYS[1], now, 'NX', 'PX', ttl) then
  return {0, now}
end

-- Add everything; on an overflow undo what was added and fail.
local done = {}
for k = 2, #KEYS do
  for _, p in ipairs(pairs_) do
    local ok = redis.pcall('HINCRBY', KEYS[k], p[1], p[2])
    if type(ok) == 'table' and ok.err then
      for _, d in ipairs(done) do
        local by = d[3]
        if by ~= '0' then  -- Redis refuses "-0"
          redis.call('HINCRBY', d[1], d[2], string.sub(by, 1, 1) == '-' and string.sub(by, 2) or '-' .. by)
        end
      end
      if ARGV[6] == '1' then
        redis.call('DEL', KEYS[1])
      end
      return redis.error_reply('ERR_OVERFLOW ' .. p[1] .. ' of ' .. KEYS[k] .. ' would overflow; nothing recorded')
    end
    done[#done + 1] = {KEYS[k], p[1], p[2]}
  end
end
-- Buckets expire: minutes after 2 days, hours after 90 days, days after 2 years.
local keep = {0, 172800000, 7776000000, 63072000000}
for k = 3, #KEYS do
  local slot = ((k - 2) % 4) + 1
  if slot ~= 1 then
    redis.call('PEXPIRE', KEYS[k], keep[slot])
  end
end
return {1, now}
