-- lib/budget.lua: a budget period's spend hash (used by budget_reserve and budget_settle).
--
-- Fields: spent (settled cost, units), held (estimates of admitted, unsettled requests),
-- h:<token> = "<expires_ms> <units>" (one hold per admitted request), next (the earliest
-- expiry among the holds), t:<percent> (a threshold already announced this period), denied
-- (acquires this budget refused in the period).
-- Money is only changed by HINCRBY of integer strings; Lua compares amounts below 2^53.

-- Take `units` (an integer string) off what `key` holds.
local function unhold(key, units)
  if units ~= '0' then  -- Redis refuses "-0"
    redis.call('HINCRBY', key, 'held', '-' .. units)
  end
end

-- Release the holds of `key` that expired by `now` (a request never settled): once per
-- expiry at most, when `next` has passed. `write` false computes the same without writing.
-- Returns what is still held.
local function live_held(key, now, write)
  local got = redis.call('HMGET', key, 'held', 'next')
  local held, next_at = tonumber(got[1]) or 0, tonumber(got[2])
  if not next_at or next_at > now then
    return held
  end
  local flat = redis.call('HGETALL', key)
  local expired, earliest = {}, nil
  for j = 1, #flat, 2 do
    if string.sub(flat[j], 1, 2) == 'h:' then
      local at, units = string.match(flat[j + 1], '^(%d+) (%d+)$')
      at = tonumber(at)
      if at <= now then
        expired[#expired + 1] = {flat[j], units}
        held = held - tonumber(units)
      elseif not earliest or at < earliest then
        earliest = at
      end
    end
  end
  if write then
    for _, e in ipairs(expired) do
      redis.call('HDEL', key, e[1])
      unhold(key, e[2])
    end
    if earliest then
      redis.call('HSET', key, 'next', string.format('%d', earliest))
    else
      redis.call('HDEL', key, 'next')
    end
  end
  return held
end
