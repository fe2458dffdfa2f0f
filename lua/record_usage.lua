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
--! include ledger

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
local pairs_, bad_pairs = usage_pairs(7, #ARGV)
if not pairs_ then
  return bad_pairs
end
if not buckets_match(now, ARGV[2], ARGV[3], ARGV[4]) then
  return {2, now}
end
if ARGV[6] == '1' and not redis.call('SET', KEYS[1], now, 'NX', 'PX', ttl) then
  return {0, now}
end
local failed = add_usage(2, #KEYS, pairs_)
if failed then
  if ARGV[6] == '1' then
    redis.call('DEL', KEYS[1])  -- nothing was recorded: the id may be sent again
  end
  return failed
end
return {1, now}
