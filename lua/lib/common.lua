-- lib/common.lua: helpers of the admission scripts, inlined at their include line
-- by registry/scripts.py when it loads them.

local MAX = 9007199254740991  -- 2^53 - 1: beyond it Lua numbers are no longer exact

-- A whole number in [low, high] (false for nil, NaN and infinities: NaN compares false with
-- anything, and the bounds are finite). No function calls: every script runs it per argument.
local function whole(v, low, high)
  return v ~= nil and v >= low and v <= high and v % 1 == 0
end

-- Whether no key is given twice: a key in two roles (written as a hash, then read as a stream)
-- would fail a call halfway through its writes. Table lookups only, no Redis call.
local function distinct_keys()
  local seen = {}
  for _, key in ipairs(KEYS) do
    if seen[key] then
      return false
    end
    seen[key] = true
  end
  return true
end

-- Now in ms: the testing clock hook's value if one is given, else Redis' TIME.
-- Returns nil and an error reply for a bad value.
local function clock(given)
  if given == '' then
    local t = redis.call('TIME')
    return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  local now = tonumber(given)
  if not whole(now, 0, MAX) then
    return nil, redis.error_reply('ERR_ARGS now must be a non-negative integer (ms)')
  end
  return now
end
