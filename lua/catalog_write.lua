-- catalog_write.lua: apply a batch of catalog writes atomically, all or none.
--
-- KEYS[1]  catalog meta (hash: revision, the write counter; epoch, made anew whenever the
--          meta hash is missing, so readers notice a catalog that was wiped and rebuilt)
-- KEYS[2]  models index (zset: model key -> revision of its last write)
-- KEYS[3]  catalog events (stream, entry id "<revision>-0"; fields put, deleted (newline-
--          separated members) and ms, the server time of the write)
-- KEYS[3+i] the hash of the i-th model written (i = 1..n)
-- ARGV[1]  events stream cap (approximate MAXLEN), a positive integer
-- ARGV[2]  pub/sub channel for change notices
-- ARGV[3]  n, the number of writes
-- ARGV[4 + 4*(i-1) + 0] op of write i: "create" (must not exist), "put" (upsert), "delete"
-- ARGV[4 + 4*(i-1) + 1] model key "provider:id" of write i
-- ARGV[4 + 4*(i-1) + 2] expected revision: "" (any), "0" (must not exist), "N" (must be at N)
-- ARGV[4 + 4*(i-1) + 3] for create/put: a JSON object of string fields; for delete: ""
--
-- returns {0, revision}          applied; the catalog is now at this revision
--         {1, i, actual}         write i expected another revision (actual 0: no such model)
--         {2, i}                 create i found the model already there
--         {3, i}                 delete i found no such model
-- Bad arguments raise an error before anything is written.

local n = tonumber(ARGV[3])
if not n or n < 1 or n ~= math.floor(n) then
  return redis.error_reply('ERR_ARGS n must be a positive integer')
end
if #KEYS ~= 3 + n or #ARGV ~= 3 + 4 * n then
  return redis.error_reply('ERR_ARGS expected ' .. (3 + n) .. ' keys and ' .. (3 + 4 * n) .. ' args')
end
local cap = tonumber(ARGV[1])
if not cap or cap < 1 or cap > 100000000 or cap % 1 ~= 0 then  -- (NaN fails the last test)
  return redis.error_reply('ERR_ARGS stream cap must be an integer from 1 to 100000000')
end

-- 1. Check everything; write nothing yet.
local writes = {}
local seen = {}  -- every key once (a model's hash is not one of the catalog's own keys either)
for k = 1, 3 do
  if seen[KEYS[k]] then
    return redis.error_reply('ERR_ARGS a key is given twice')
  end
  seen[KEYS[k]] = true
end
for i = 1, n do
  local base = 4 + 4 * (i - 1)
  local op, model, expected, body = ARGV[base], ARGV[base + 1], ARGV[base + 2], ARGV[base + 3]
  local hash = KEYS[3 + i]
  local fields = nil
  if op == 'create' or op == 'put' then
    local ok, decoded = pcall(cjson.decode, body)
    if not ok or type(decoded) ~= 'table' then
      return redis.error_reply('ERR_ARGS write ' .. i .. ': fields are not a JSON object')
    end
    fields = {}
    for name, value in pairs(decoded) do
      if type(name) ~= 'string' or type(value) ~= 'string' or string.sub(name, 1, 1) == '_' then
        return redis.error_reply('ERR_ARGS write ' .. i .. ': field ' .. tostring(name) .. ' is not a plain string field')
      end
      fields[#fields + 1] = name
      fields[#fields + 1] = value
    end
    if #fields == 0 then
      return redis.error_reply('ERR_ARGS write ' .. i .. ': no fields')
    end
    if #fields > 2000 then  -- unpack() below takes at most a few thousand values
      return redis.error_reply('ERR_ARGS write ' .. i .. ': more than 1000 fields')
    end
  elseif op ~= 'delete' then
    return redis.error_reply('ERR_ARGS write ' .. i .. ': unknown op ' .. tostring(op))
  end
  if model == '' then
    return redis.error_reply('ERR_ARGS write ' .. i .. ': empty model key')
  end
  if seen[hash] then
    return redis.error_reply('ERR_ARGS write ' .. i .. ': the key of ' .. model .. ' is given twice')
  end
  seen[hash] = true
  local current = tonumber(redis.call('HGET', hash, '_revision') or '0') or 0
  if expected ~= '' then
    local want = tonumber(expected)
    if not want then
      return redis.error_reply('ERR_ARGS write ' .. i .. ': expected revision is not a number')
    end
    if want ~= current then
      return {1, i, current}
    end
  end
  if op == 'create' and current ~= 0 then
    return {2, i}
  end
  if op == 'delete' and current == 0 then
    return {3, i}
  end
  writes[i] = {op, model, hash, fields}
end

-- 2. Next revision; a missing meta hash (first write, or wiped) gets a new epoch, and a
--    revision that continues the stream (e.g. after the meta hash was deleted by hand). The
--    catalog's own keys are read first: one of the wrong type fails the call before any write.
local now = redis.call('TIME')
local top = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)[1]
redis.call('ZCARD', KEYS[2])
if redis.call('HEXISTS', KEYS[1], 'epoch') == 0 then
  redis.call('HSET', KEYS[1], 'epoch', now[1] .. '.' .. now[2])
end
local revision = redis.call('HINCRBY', KEYS[1], 'revision', 1)
if top then
  local last = tonumber(string.match(top[1], '^(%d+)-'))
  if last and last >= revision then
    revision = last + 1
    redis.call('HSET', KEYS[1], 'revision', revision)
  end
end

-- 3. Apply.
local updated_ms = string.format('%d', tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000))
local put, deleted = {}, {}
for i = 1, n do
  local op, model, hash, fields = writes[i][1], writes[i][2], writes[i][3], writes[i][4]
  redis.call('DEL', hash)
  if op == 'delete' then
    redis.call('ZREM', KEYS[2], model)
    deleted[#deleted + 1] = model
  else
    redis.call('HSET', hash, '_revision', revision, '_updated_ms', updated_ms, unpack(fields))
    redis.call('ZADD', KEYS[2], revision, model)
    put[#put + 1] = model
  end
end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', cap, revision .. '-0',
  'put', table.concat(put, '\n'), 'deleted', table.concat(deleted, '\n'), 'ms', updated_ms)
redis.call('PUBLISH', ARGV[2], revision)
return {0, revision}
