-- record_usage.lua: add one request's usage to a model's ledger counters, once.
--
-- Counters live in hashes under the model's hash tag: all-time totals and UTC minute, hour
-- and day buckets, for the model and (when given) for the tenant on that model. Money comes
-- in as integer units (see registry/ledger/money.py) and is only ever added by HINCRBY, so
-- no amount passes through a Lua number.
--
-- KEYS[1]    the request id's marker (string), set NX with a TTL when ARGV[6] is not ""
-- KEYS[2]    the model's usage events (stream), written when ARGV[7] > 0
-- KEYS[3..6] the model's total, minute, hour and day hashes
-- KEYS[7..10] the tenant's (present when a tenant is given, with KEYS[11])
-- KEYS[11]   the model's tenant set
-- ARGV[1]    now in ms, or "" to use the server's TIME (the testing clock hook)
-- ARGV[2..4] the minute, hour and day indexes the client named the bucket keys after
-- ARGV[5]    the request id marker's TTL in ms
-- ARGV[6]    this call's nonce (1 to 32 letters and digits), kept in the request id's marker:
--            the same call sent again (its reply lost, re-sent by the client's own retry) is
--            told it recorded, where another call with the same request id is told it did not
-- ARGV[7]    the request id ("": none, not idempotent)
-- ARGV[8]    usage event: 0 for none, else the stream's cap (approximate MAXLEN)
-- ARGV[9]    the tenant ("" for none; then 6 keys, else 11)
-- ARGV[10..] field, increment pairs, at most 64 (positive integer strings: counters only grow;
--            fields plain names)
--
-- returns {1, now_ms} recorded (by this call, or by this very call sent before); {0, now_ms}
--         already recorded under this request id by another call;
--         {2, now_ms} the bucket indexes disagree with the server's clock: name the keys
--         after now_ms and call again. A counter that would overflow raises an error after
--         undoing what this call added.
--! include common
--! include ledger

local tenant = ARGV[9]
if #ARGV < 9 or #ARGV % 2 ~= 1 or #KEYS ~= ((tenant == '') and 6 or 11) then
  return redis.error_reply('ERR_ARGS expected 6 keys (11 with a tenant) and 9 + 2k args')
end
if not distinct_keys() then
  return redis.error_reply('ERR_ARGS a key is given twice')
end
local now, bad_now = clock(ARGV[1])
if not now then
  return bad_now
end
local ttl = tonumber(ARGV[5])
if not whole(ttl, 1, 2592000000) then
  return redis.error_reply('ERR_ARGS id ttl must be an integer from 1 to 2592000000 ms')
end
local nonce = ARGV[6]
if not string.find(nonce, '^%w+$') or #nonce > 32 then
  return redis.error_reply('ERR_ARGS nonce must be 1 to 32 letters and digits')
end
local cap = tonumber(ARGV[8])
if not whole(cap, 0, 100000000) then
  return redis.error_reply('ERR_ARGS event cap must be an integer from 0 to 100000000')
end
local pairs_, bad_pairs = usage_pairs(10, #ARGV)
if not pairs_ then
  return bad_pairs
end
local request_id = ARGV[7]
if request_id ~= '' then
  local mark = redis.call('GET', KEYS[1])
  if mark then  -- recorded before: by this very call (its nonce), or by another
    return {(mark == nonce) and 1 or 0, now}
  end
end
if not buckets_match(now, ARGV[2], ARGV[3], ARGV[4]) then
  return {2, now}
end
local new_tenant = check_notes(KEYS[2], cap, tenant, KEYS[11])
if request_id ~= '' then
  redis.call('SET', KEYS[1], nonce, 'PX', ttl)
end
local failed = add_usage(3, (tenant == '') and 6 or 10, pairs_)
if failed then
  if request_id ~= '' then
    redis.call('DEL', KEYS[1])  -- nothing was recorded: the id may be sent again
  end
  return failed
end
note_usage(KEYS[2], cap, request_id, tenant, KEYS[11], pairs_, new_tenant)
return {1, now}
